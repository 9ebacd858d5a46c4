"""On-disk storage behind the local Hub test server.

Layout under ``data_dir``::

    blobs/<aa>/<sha256>              file contents, content-addressed (shared by all repos)
    blobs/tmp/                       partial uploads; renamed into place only once verified
    repos/<type>/<namespace>/<name>/
        meta.json                    {"private": bool, "created_at": iso date}
        refs.json                    {"branches": {name: commit}, "tags": {name: commit}}
        commits/<commit oid>.json    parents, message, author, date and a snapshot {path: file entry}

Every JSON file is written to a temporary name then renamed, and a commit is written before the
ref that points to it, so a server killed at any moment leaves a consistent store behind (at worst
an unreferenced blob or commit).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from peft_hybrid.hub_server.records import (
    COMMIT_RE,
    DEFAULT_BRANCH,
    NAME_RE,
    SHA256_RE,
    AddFile,
    ApiRefusal,
    Commit,
    DeleteFile,
    FileEntry,
    Operation,
    RepoRef,
    default_gitattributes,
    now_iso,
    revision_not_found,
)


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: readers (and a restarted server) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


class HubStore:
    """Repos, refs, commits and blobs on disk. Safe to share between request threads."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.root = Path(data_dir)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.blob_dir / "tmp"
        self.repo_dir = self.root / "repos"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        # One lock for every change: a test server needs correctness, not write throughput.
        self._lock = threading.RLock()

    # -- blobs ---------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self.blob_path(sha256) if SHA256_RE.match(sha256) else None
        return path is not None and path.is_file() and (size is None or path.stat().st_size == size)

    def put_bytes(self, data: bytes) -> FileEntry:
        """Store a regular (small) file's content."""
        entry = FileEntry.regular(data)
        if not self.has_blob(entry.sha256):
            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._adopt(Path(tmp), entry.sha256)
        return entry

    def new_temp_path(self) -> Path:
        """A fresh file name for a streamed upload, to hand to :meth:`adopt_upload` once written."""
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir)
        os.close(fd)
        return Path(tmp)

    def adopt_upload(self, tmp: Path, sha256: str, size: int, actual_sha256: str) -> None:
        """Move a fully received upload into the store if it is what the client announced."""
        actual_size = tmp.stat().st_size
        if actual_sha256 != sha256 or actual_size != size:
            tmp.unlink(missing_ok=True)
            raise ApiRefusal(
                400,
                f"Uploaded content does not match: expected sha256 {sha256} and size {size}, "
                f"got {actual_sha256} and {actual_size}",
            )
        self._adopt(tmp, sha256)

    def _adopt(self, tmp: Path, sha256: str) -> None:
        dest = self.blob_path(sha256)
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp, dest)

    # -- repos ---------------------------------------------------------------------------------
    def _dir(self, repo: RepoRef) -> Path:
        return self.repo_dir / repo.type / repo.namespace / repo.name

    def meta(self, repo: RepoRef) -> dict[str, Any] | None:
        """The repo's metadata, or None if it does not exist."""
        path = self._dir(repo) / "meta.json"
        return _read_json(path) if path.is_file() else None

    def list_repos(self, repo_type: str) -> list[RepoRef]:
        base = self.repo_dir / repo_type
        return sorted(
            RepoRef(repo_type, meta.parent.parent.name, meta.parent.name) for meta in base.glob("*/*/meta.json")
        )

    def create_repo(self, repo: RepoRef, *, private: bool, author: str) -> None:
        if not NAME_RE.match(repo.name) or repo.name.endswith((".git", ".")) or ".." in repo.name:
            raise ApiRefusal(400, f"Invalid repo name: {repo.name!r}")
        with self._lock:
            if self.meta(repo) is not None:
                raise ApiRefusal(409, f"You already created this {repo.type} repo")
            repo_dir = self._dir(repo)
            # A repo killed half-created has no meta.json: start over cleanly.
            shutil.rmtree(repo_dir, ignore_errors=True)
            gitattributes = self.put_bytes(default_gitattributes().encode())
            commit = self._new_commit([], "initial commit", "", author, {".gitattributes": gitattributes})
            self._save_commit(repo, commit)
            _write_json(repo_dir / "refs.json", {"branches": {DEFAULT_BRANCH: commit.oid}, "tags": {}})
            _write_json(repo_dir / "meta.json", {"private": private, "created_at": commit.date})

    def delete_repo(self, repo: RepoRef) -> None:
        with self._lock:
            # meta.json goes first so the repo stops existing atomically.
            (self._dir(repo) / "meta.json").unlink(missing_ok=True)
            shutil.rmtree(self._dir(repo), ignore_errors=True)

    def set_private(self, repo: RepoRef, private: bool) -> None:
        with self._lock:
            meta = self.meta(repo) or {}
            meta["private"] = private
            _write_json(self._dir(repo) / "meta.json", meta)

    # -- refs and commits ----------------------------------------------------------------------
    def refs(self, repo: RepoRef) -> dict[str, dict[str, str]]:
        return _read_json(self._dir(repo) / "refs.json")

    def resolve(self, repo: RepoRef, revision: str) -> str:
        """Commit oid of a branch, tag or full commit id; RevisionNotFound otherwise."""
        refs = self.refs(repo)
        for kind, prefix in (("branches", "refs/heads/"), ("tags", "refs/tags/")):
            name = revision[len(prefix) :] if revision.startswith(prefix) else revision
            if name in refs[kind]:
                return refs[kind][name]
        if COMMIT_RE.match(revision) and (self._dir(repo) / "commits" / f"{revision}.json").is_file():
            return revision
        raise revision_not_found(revision)

    def get_commit(self, repo: RepoRef, oid: str) -> Commit:
        return Commit.from_json(_read_json(self._dir(repo) / "commits" / f"{oid}.json"))

    def commit_at(self, repo: RepoRef, revision: str) -> Commit:
        return self.get_commit(repo, self.resolve(repo, revision))

    def history(self, repo: RepoRef, revision: str) -> list[Commit]:
        """Commits reachable from ``revision`` through first parents, newest first."""
        commit: Commit | None = self.commit_at(repo, revision)
        out = []
        while commit is not None:
            out.append(commit)
            commit = self.get_commit(repo, commit.parents[0]) if commit.parents else None
        return out

    def commit(
        self,
        repo: RepoRef,
        branch: str,
        operations: list[Operation],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply ``operations`` on top of ``branch`` and move the branch to the new commit."""
        with self._lock:
            refs = self.refs(repo)
            if branch not in refs["branches"]:
                raise revision_not_found(branch)
            head = refs["branches"][branch]
            if parent_commit is not None and parent_commit != head:
                # Someone pushed since the client read the repo: the Hub refuses rather than merge.
                raise ApiRefusal(412, f"A commit has happened since {parent_commit}. Please refresh and try again.")
            files = dict(self.get_commit(repo, head).files)
            for op in operations:
                if isinstance(op, AddFile):
                    files[op.path] = op.entry
                elif isinstance(op, DeleteFile):
                    if files.pop(op.path, None) is None:
                        raise ApiRefusal(404, f"A file with this name doesn't exist: {op.path}", "EntryNotFound")
                else:
                    prefix = op.path.strip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)] if prefix != "/" else list(files)
                    if not doomed:
                        raise ApiRefusal(404, f"A folder with this name doesn't exist: {op.path}", "EntryNotFound")
                    for path in doomed:
                        del files[path]
            commit = self._new_commit([head], title, message, author, files)
            self._save_commit(repo, commit)
            refs["branches"][branch] = commit.oid
            _write_json(self._dir(repo) / "refs.json", refs)
            return commit

    def set_ref(self, repo: RepoRef, kind: str, name: str, oid: str | None, *, exist_ok: bool = False) -> None:
        """Create (oid given) or delete (oid None) a branch or tag (``kind``: "branches"/"tags")."""
        with self._lock:
            refs = self.refs(repo)
            if oid is None:
                if refs[kind].pop(name, None) is None:
                    raise revision_not_found(name)
            elif name in refs[kind] and not exist_ok:
                what = "Branch" if kind == "branches" else "Tag"
                raise ApiRefusal(409, f"{what} {name} already exists")
            else:
                refs[kind][name] = oid
            _write_json(self._dir(repo) / "refs.json", refs)

    def _new_commit(
        self, parents: list[str], title: str, message: str, author: str, files: dict[str, FileEntry]
    ) -> Commit:
        commit = Commit("", parents, title, message, author, now_iso(), files)
        body = json.dumps({k: v for k, v in commit.to_json().items() if k != "oid"}, sort_keys=True)
        commit.oid = hashlib.sha1(body.encode()).hexdigest()
        return commit

    def _save_commit(self, repo: RepoRef, commit: Commit) -> None:
        _write_json(self._dir(repo) / "commits" / f"{commit.oid}.json", commit.to_json())
