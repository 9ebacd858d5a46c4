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

import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union

REPO_TYPES = ("model", "dataset", "space")
DEFAULT_BRANCH = "main"
# Files at least this big always go through LFS, like on the Hub.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
# Suffixes tracked by LFS in the .gitattributes of a new repo (a subset of the Hub's default list).
DEFAULT_LFS_SUFFIXES = (
    "7z",
    "arrow",
    "bin",
    "bz2",
    "ckpt",
    "gguf",
    "gif",
    "gz",
    "h5",
    "jpeg",
    "jpg",
    "joblib",
    "model",
    "msgpack",
    "npy",
    "npz",
    "onnx",
    "ot",
    "parquet",
    "pb",
    "pickle",
    "pkl",
    "png",
    "pt",
    "pth",
    "safetensors",
    "tar",
    "tflite",
    "tgz",
    "wasm",
    "webp",
    "xz",
    "zip",
    "zst",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class ApiRefusal(Exception):
    """A refusal with the HTTP status, message and optional ``X-Error-Code`` the Hub would send."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra  # additional JSON fields, e.g. the url of a repo that already exists


def revision_not_found(revision: str) -> ApiRefusal:
    return ApiRefusal(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def now_iso() -> str:
    """Current UTC time in the format the Hub client parses (``%Y-%m-%dT%H:%M:%S.%fZ``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in git for a large file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def default_gitattributes() -> str:
    lines = [f"*.{suffix} filter=lfs diff=lfs merge=lfs -text" for suffix in DEFAULT_LFS_SUFFIXES]
    return "\n".join(lines) + "\n"


def lfs_patterns(gitattributes: str) -> list[str]:
    """Patterns that a .gitattributes file routes through LFS."""
    return [
        line.split()[0]
        for line in gitattributes.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and "filter=lfs" in line.split()[1:]
    ]


def matches_any(path: str, patterns: Iterable[str]) -> bool:
    """Simplified git pattern match: patterns without '/' match the basename, others the whole path."""
    base = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else base, p.lstrip("/")) for p in patterns)


@dataclass(frozen=True, order=True)
class RepoRef:
    """Identity of a repo: type (model/dataset/space), namespace (owner) and name."""

    type: str
    namespace: str
    name: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def url_path(self) -> str:
        """Path of the repo's web page: models have no type prefix, the others do."""
        return self.repo_id if self.type == "model" else f"{self.type}s/{self.repo_id}"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit snapshot."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git blob id: of the content for regular files, of the LFS pointer for LFS files

    @classmethod
    def regular(cls, data: bytes) -> FileEntry:
        return cls(hashlib.sha256(data).hexdigest(), len(data), False, git_blob_sha1(data))

    @classmethod
    def large(cls, sha256: str, size: int) -> FileEntry:
        return cls(sha256, size, True, git_blob_sha1(lfs_pointer(sha256, size)))

    @property
    def etag(self) -> str:
        """What the Hub sends as (linked) ETag: the sha256 for LFS files, the git oid otherwise."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    parents: list[str]
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = {path: asdict(entry) for path, entry in sorted(self.files.items())}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        files = {path: FileEntry(**entry) for path, entry in data.pop("files").items()}
        return cls(files=files, **data)

    def folders(self) -> set[str]:
        """Every folder that holds at least one file ("" is the root)."""
        out = {""}
        for path in self.files:
            parts = path.split("/")[:-1]
            out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return out

    def folder_oid(self, folder: str) -> str:
        prefix = folder + "/" if folder else ""
        listing = "".join(f"{p}\0{e.git_oid}\n" for p, e in sorted(self.files.items()) if p.startswith(prefix))
        return hashlib.sha1(listing.encode()).hexdigest()


@dataclass(frozen=True)
class AddFile:
    path: str
    entry: FileEntry


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


Operation = Union[AddFile, DeleteFile, DeleteFolder]


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
        path = self.blob_path(sha256) if _SHA256_RE.match(sha256) else None
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
        if not _NAME_RE.match(repo.name) or repo.name.endswith((".git", ".")) or ".." in repo.name:
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
        if _COMMIT_RE.match(revision) and (self._dir(repo) / "commits" / f"{revision}.json").is_file():
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
