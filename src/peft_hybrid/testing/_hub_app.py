"""HTTP side of the local Hub test server: the endpoints the huggingface_hub client calls.

Answers, status codes and headers follow what the real Hub sends, so that the unmodified client
(and PEFT / transformers on top of it) behaves exactly as it would against huggingface.co,
refusals included. Storage lives in :mod:`._hub_store`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import time
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qs, unquote

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ._hub_store import (
    DEFAULT_BRANCH,
    LFS_SIZE_THRESHOLD,
    REPO_TYPES,
    AddFile,
    Commit,
    DeleteFile,
    DeleteFolder,
    FileEntry,
    HubError,
    HubStore,
    Operation,
    RepoRef,
    default_gitattributes,
    lfs_patterns,
    lfs_pointer,
    matches_any,
)

_TYPE_PLURALS = {f"{t}s": t for t in REPO_TYPES}
_INVALID_TOKEN = "Invalid credentials in Authorization header"
_TICKET_TTL_S = 3600.0
_READ_CHUNK = 1 << 20
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes"}


def _clean_path(path: Any) -> str:
    """A repo-relative file path, refusing anything that could escape or confuse the tree."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")) or path.split("/")[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _raw_rev_and_path(request: Request, marker_index: int) -> tuple[str, str]:
    """Revision and file path that follow the segment at ``marker_index`` ("tree", "resolve").

    The client percent-encodes '/' inside a revision (``refs%2Fpr%2F1``) but not inside a file
    path, so the raw path is split on '/' first and each part decoded afterwards.
    """
    raw = request.scope.get("raw_path") or request.url.path.encode()
    segments = raw.decode("latin-1").split("?", 1)[0].split("/")[1:]
    revision = unquote(segments[marker_index + 1]) if len(segments) > marker_index + 1 else ""
    return revision, unquote("/".join(segments[marker_index + 2 :]))


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single-range ``Range`` header; None to send the whole file."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None  # absent, multi-range or malformed: RFC 9110 lets a server ignore it
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _read_file(path: os.PathLike[str], start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(_READ_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def _error_response(exc: HubError) -> JSONResponse:
    # Header values must be latin-1; a path in a message may not be.
    message = exc.message.encode("ascii", "backslashreplace").decode()
    headers = {"X-Error-Message": message, **exc.headers}
    if exc.code:
        headers["X-Error-Code"] = exc.code
    return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status, headers=headers)


class _Hub:
    """State shared by the request handlers: store, users, one-time LFS upload tickets, counters."""

    def __init__(self, data_dir: str | os.PathLike[str], users: Mapping[str, str]) -> None:
        self.store = HubStore(data_dir)
        self._users = dict(users)
        self._tickets: dict[str, tuple[str, int, float]] = {}  # ticket -> (oid, size, expiry)
        self._lock = threading.Lock()
        # Server-side counters, so tests can tell what a push really transferred.
        self.stats = {"commits": 0, "regular_files_committed": 0, "lfs_uploads": 0, "lfs_bytes_uploaded": 0}

    # -- identity and permissions --------------------------------------------------------------
    def user(self, request: Request) -> str | None:
        """The caller's user name; None when anonymous; 401 for a token nobody owns."""
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HubError(401, _INVALID_TOKEN)
        token = token.strip()
        for name, known in self._users.items():
            if secrets.compare_digest(known.encode(), token.encode()):
                return name
        raise HubError(401, _INVALID_TOKEN)

    def repo(self, request: Request) -> RepoRef:
        params = request.path_params
        repo_type = _TYPE_PLURALS.get(params.get("tp", "models"))
        if repo_type is None:
            raise HubError(404, "Not Found")
        return RepoRef(repo_type, params["ns"], params["name"])

    def readable(self, request: Request, repo: RepoRef) -> tuple[str | None, dict[str, Any]]:
        user = self.user(request)
        meta = self.store.meta(repo)
        if meta is None or (meta["private"] and user != repo.namespace):
            # One answer for missing and for hidden repos, so private names do not leak.
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return user, meta

    def writable(self, request: Request, repo: RepoRef) -> str:
        user, _ = self.readable(request, repo)
        if user is None:
            raise HubError(401, "You must be authenticated to write to this repository")
        if user != repo.namespace:
            raise HubError(403, f"You don't have the rights to write to {repo.repo_id}")
        return user

    # -- LFS upload tickets --------------------------------------------------------------------
    def new_ticket(self, oid: str, size: int) -> str:
        """A random one-time credential for one upload: the PUT carries no Authorization header."""
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            now = time.monotonic()
            self._tickets = {t: v for t, v in self._tickets.items() if v[2] > now}
            self._tickets[ticket] = (oid, size, now + _TICKET_TTL_S)
        return ticket

    def check_ticket(self, ticket: str, oid: str) -> int:
        """Size announced for ``oid`` if ``ticket`` is valid for it."""
        with self._lock:
            entry = self._tickets.get(ticket)
        if entry is None or entry[0] != oid or entry[2] < time.monotonic():
            raise HubError(403, "Invalid or expired upload credential")
        return entry[1]

    def spend_ticket(self, ticket: str) -> None:
        # Spent only after a successful upload, so the client's retry of a failed PUT still works.
        with self._lock:
            self._tickets.pop(ticket, None)

    # -- JSON views ----------------------------------------------------------------------------
    @staticmethod
    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @staticmethod
    def file_json(path: str, entry: FileEntry) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            pointer_size = len(lfs_pointer(entry.sha256, entry.size))
            out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": pointer_size}
        return out

    @staticmethod
    def folder_json(commit: Commit, folder: str) -> dict[str, Any]:
        return {"type": "directory", "oid": commit.folder_oid(folder), "size": 0, "path": folder}

    def repo_json(self, repo: RepoRef, meta: dict[str, Any], commit: Commit, blobs: bool) -> dict[str, Any]:
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    lfs = self.file_json(path, entry)["lfs"]
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        return {
            "_id": hashlib.sha1(repo.url_path.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.oid,
            "private": meta["private"],
            "gated": False,
            "disabled": False,
            "createdAt": meta["created_at"],
            "lastModified": commit.date,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }

    def text_at(self, commit: Commit, path: str) -> str | None:
        entry = commit.files.get(path)
        if entry is None:
            return None
        return self.store.blob_path(entry.sha256).read_bytes().decode("utf-8", "replace")


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise HubError(400, f"Invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise HubError(400, "JSON body must be an object")
    return data


def _metadata_errors(readme: str) -> list[str]:
    """Problems in a README's YAML front matter (the Hub refuses commits with broken metadata)."""
    if not readme.startswith("---"):
        return []
    match = re.match(r"^---[ \t]*\r?\n(.*?)\r?\n?---[ \t]*(\r?\n|$)", readme, re.S)
    if match is None:
        return ["The YAML metadata block is not closed by a '---' line"]
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return [f"Invalid YAML in metadata: {exc}"]
    return [] if data is None or isinstance(data, dict) else ["The YAML metadata must be a mapping"]


def _gitignored(path: str, gitignore: str | None) -> bool:
    """Simplified .gitignore match (no negation): enough for the client's shouldIgnore flag."""
    if not gitignore:
        return False
    patterns = [line.strip() for line in gitignore.splitlines() if line.strip() and line.strip()[0] not in "#!"]
    folders = [p.strip("/") + "/" for p in patterns if p.endswith("/")]
    return any(path.startswith(f) or f"/{f}" in path for f in folders) or matches_any(path, patterns)


def create_app(data_dir: str | os.PathLike[str], users: Mapping[str, str]) -> FastAPI:
    """A FastAPI app that serves Hub repos stored under ``data_dir`` to ``users`` (name -> token)."""
    hub = _Hub(data_dir, users)
    store = hub.store
    app = FastAPI(title="peft_hybrid local Hub", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub

    @app.exception_handler(HubError)
    async def _on_hub_error(request: Request, exc: HubError) -> JSONResponse:
        return _error_response(exc)

    # -- account and repo lifecycle ------------------------------------------------------------
    @app.get("/api/whoami-v2")
    async def whoami(request: Request) -> dict[str, Any]:
        user = hub.user(request)
        if user is None:
            raise HubError(401, "You must be authenticated to call whoami")
        token = {"displayName": "local test token", "role": "write"}
        return {"type": "user", "name": user, "fullname": user, "orgs": [],
                "auth": {"type": "access_token", "accessToken": token}}  # fmt: skip

    @app.get("/_testing/stats")
    async def testing_stats() -> dict[str, int]:
        """Counters for tests (not a Hub endpoint); holds no names, paths or tokens."""
        return dict(hub.stats)

    @app.post("/api/repos/create")
    async def create_repo(request: Request) -> dict[str, Any]:
        user = hub.user(request)
        body = await _json_body(request)
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        repo_type, name = body.get("type") or "model", body.get("name")
        namespace = body.get("organization") or user
        if repo_type not in REPO_TYPES or not isinstance(name, str):
            raise HubError(400, "Expected a repo 'name' and a 'type' among model, dataset, space")
        if namespace != user:
            raise HubError(403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"')
        visibility = body.get("visibility")
        private = visibility == "private" if visibility is not None else bool(body.get("private", False))
        repo = RepoRef(repo_type, namespace, name)
        url = f"{hub.base_url(request)}/{repo.url_path}"
        try:
            store.create_repo(repo, private=private, author=user)
        except HubError as exc:
            if exc.status == 409:  # huggingface_hub reads "url" from the 409 when exist_ok=True
                raise HubError(409, exc.message, url=url) from None
            raise
        return {"url": url, "name": repo.repo_id, "id": repo.repo_id}

    @app.delete("/api/repos/delete")
    async def delete_repo(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        user = hub.user(request)
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES or not isinstance(body.get("name"), str):
            raise HubError(400, "Expected a repo 'name' and a 'type' among model, dataset, space")
        repo = RepoRef(repo_type, body.get("organization") or user or "", body["name"])
        hub.writable(request, repo)
        store.delete_repo(repo)
        return {}

    @app.put("/api/{tp}/{ns}/{name}/settings")
    async def repo_settings(request: Request) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        body = await _json_body(request)
        if body.get("visibility") is not None:
            store.set_private(repo, body["visibility"] == "private")
        elif body.get("private") is not None:
            store.set_private(repo, bool(body["private"]))
        return {}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> JSONResponse:
        content = (await _json_body(request)).get("content") or ""
        errors = _metadata_errors(content)
        body = {"errors": [{"message": e} for e in errors], "warnings": []}
        return JSONResponse(body, status_code=400 if errors else 200)

    # -- reading repos -------------------------------------------------------------------------
    @app.get("/api/{tp}")
    async def list_repos(request: Request, tp: str, author: str | None = None, search: str | None = None) -> list:
        if tp not in _TYPE_PLURALS:
            raise HubError(404, "Not Found")
        user = hub.user(request)
        out = []
        for repo in store.list_repos(_TYPE_PLURALS[tp]):
            meta = store.meta(repo)
            if meta is None or (meta["private"] and user != repo.namespace):
                continue
            if (author and repo.namespace != author) or (search and search.lower() not in repo.repo_id.lower()):
                continue
            out.append(hub.repo_json(repo, meta, store.commit_at(repo, DEFAULT_BRANCH), blobs=False))
        return out

    @app.get("/api/{tp}/{ns}/{name}")
    @app.get("/api/{tp}/{ns}/{name}/revision/{revision:path}")
    async def repo_info(request: Request, revision: str = DEFAULT_BRANCH, blobs: str | None = None) -> dict:
        repo = hub.repo(request)
        _, meta = hub.readable(request, repo)
        return hub.repo_json(repo, meta, store.commit_at(repo, revision), blobs=_truthy(blobs))

    @app.get("/api/{tp}/{ns}/{name}/tree/{rest:path}")
    async def list_tree(request: Request, recursive: str | None = None) -> list:
        repo = hub.repo(request)
        hub.readable(request, repo)
        revision, folder = _raw_rev_and_path(request, marker_index=4)  # api/<tp>/<ns>/<name>/tree/<rev>
        commit = store.commit_at(repo, revision)
        folder = folder.strip("/")
        if folder not in commit.folders():
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        prefix, deep = (folder + "/" if folder else ""), _truthy(recursive)

        def wanted(path: str) -> bool:
            return path.startswith(prefix) and path != folder and (deep or "/" not in path[len(prefix) :])

        folders = [hub.folder_json(commit, f) for f in sorted(commit.folders()) if f and wanted(f)]
        files = [hub.file_json(p, e) for p, e in sorted(commit.files.items()) if wanted(p)]
        return folders + files

    @app.post("/api/{tp}/{ns}/{name}/paths-info/{revision:path}")
    async def paths_info(request: Request, revision: str) -> list:
        repo = hub.repo(request)
        hub.readable(request, repo)
        body = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:  # the client sends a urlencoded form: paths=a&paths=b
            paths = parse_qs(body.decode("utf-8")).get("paths", [])
        commit = store.commit_at(repo, revision)
        folders = commit.folders()
        out = []
        for path in (p.strip("/") for p in paths):
            if path in commit.files:
                out.append(hub.file_json(path, commit.files[path]))
            elif path and path in folders:
                out.append(hub.folder_json(commit, path))
        return out

    @app.get("/api/{tp}/{ns}/{name}/refs")
    async def list_refs(request: Request) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.readable(request, repo)
        refs = store.refs(repo)

        def view(kind: str, prefix: str) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"{prefix}{n}", "targetCommit": oid} for n, oid in sorted(refs[kind].items())]

        return {"branches": view("branches", "refs/heads/"), "tags": view("tags", "refs/tags/"),
                "converts": [], "pullRequests": []}  # fmt: skip

    @app.get("/api/{tp}/{ns}/{name}/commits/{revision:path}")
    async def list_commits(request: Request, revision: str) -> list:
        repo = hub.repo(request)
        hub.readable(request, repo)
        return [
            {"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
            for c in store.history(repo, revision)
        ]

    # Decorators apply bottom-up: the model route (no type prefix) is registered, hence matched, first.
    @app.api_route("/{tp}/{ns}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
    @app.api_route("/{ns}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
    async def resolve(request: Request) -> Response:
        repo = hub.repo(request)
        hub.readable(request, repo)
        marker = 3 if "tp" in request.path_params else 2  # [<tp>/]<ns>/<name>/resolve/<rev>/<path>
        revision, path = _raw_rev_and_path(request, marker)
        commit = store.commit_at(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            # X-Repo-Commit lets the client cache the file's absence for this commit.
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        if request.method == "HEAD":
            return Response(headers={**headers, "Content-Length": str(entry.size)}, media_type="application/octet-stream")
        byte_range = _parse_range(request.headers.get("range"), entry.size)
        start, end = byte_range or (0, entry.size - 1)
        headers["Content-Length"] = str(end - start + 1)
        if byte_range is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        return StreamingResponse(
            _read_file(store.blob_path(entry.sha256), start, end - start + 1),
            status_code=206 if byte_range else 200, headers=headers, media_type="application/octet-stream",
        )  # fmt: skip

    # -- writing repos -------------------------------------------------------------------------
    @app.post("/api/{tp}/{ns}/{name}/preupload/{revision:path}")
    async def preupload(request: Request, revision: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        body = await _json_body(request)
        commit = store.commit_at(repo, revision)
        # Like the Hub, the repo's own .gitattributes decides which paths go through LFS.
        patterns = lfs_patterns(hub.text_at(commit, ".gitattributes") or default_gitattributes())
        gitignore = body.get("gitIgnore") or hub.text_at(commit, ".gitignore")
        files = []
        for item in body.get("files", []):
            path, size = _clean_path(item.get("path")), int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample") or "")
            lfs = size >= LFS_SIZE_THRESHOLD or b"\0" in sample or matches_any(path, patterns)
            existing = commit.files.get(path)
            # The oid lets the client drop files whose content the revision already holds.
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": _gitignored(path, gitignore), "oid": existing.etag if existing else None})  # fmt: skip
        return {"files": files, "commitOid": commit.oid}

    @app.post("/{ns}/{name}.git/info/lfs/objects/batch")
    @app.post("/{tp}/{ns}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch(request: Request) -> JSONResponse:
        repo = hub.repo(request)
        hub.writable(request, repo)
        body = await _json_body(request)
        if body.get("operation") != "upload":
            raise HubError(400, "Only LFS uploads are served here; download files through /resolve")
        base, objects = hub.base_url(request), []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int) and size >= 0):
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})  # fmt: skip
                continue
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not store.has_blob(oid, size):  # no "actions" tells the client the object is already stored
                item["actions"] = {
                    "upload": {"href": f"{base}/_lfs/upload/{oid}?ticket={hub.new_ticket(oid, size)}"},
                    "verify": {"href": f"{base}/{repo.url_path}.git/info/lfs/objects/verify"},
                }
            objects.append(item)
        payload = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return JSONResponse(payload, media_type="application/vnd.git-lfs+json")

    @app.put("/_lfs/upload/{oid}")
    async def lfs_upload(request: Request, oid: str, ticket: str = "") -> Response:
        size = hub.check_ticket(ticket, oid)
        tmp, digest = store.new_temp_path(), hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    digest.update(chunk)
                    f.write(chunk)
            store.adopt_upload(tmp, oid, size, digest.hexdigest())
        finally:
            tmp.unlink(missing_ok=True)  # no-op once adopted
        hub.spend_ticket(ticket)
        hub.stats["lfs_uploads"] += 1
        hub.stats["lfs_bytes_uploaded"] += size
        return Response(status_code=200)

    @app.post("/{ns}/{name}.git/info/lfs/objects/verify")
    @app.post("/{tp}/{ns}/{name}.git/info/lfs/objects/verify")
    async def lfs_verify(request: Request) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        body = await _json_body(request)
        if not store.has_blob(str(body.get("oid")), body.get("size")):
            raise HubError(404, f"LFS object {body.get('oid')} of size {body.get('size')} was not uploaded")
        return {"success": True}

    @app.post("/api/{tp}/{ns}/{name}/commit/{revision:path}")
    async def commit(request: Request, revision: str, create_pr: str | None = None) -> dict[str, Any]:
        repo = hub.repo(request)
        user = hub.writable(request, repo)
        if _truthy(create_pr):
            raise HubError(400, "Pull requests are not supported by this local Hub server")
        header: dict[str, Any] | None = None
        operations: list[Operation] = []
        for line in (await request.body()).splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise HubError(400, "Malformed commit payload: expected NDJSON lines {key, value}") from None
            if key == "header":
                header = value
            elif key == "file":
                raw = value.get("content", "")
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                operations.append(AddFile(_clean_path(value.get("path")), store.put_bytes(data)))
            elif key == "lfsFile":
                path, oid, size = _clean_path(value.get("path")), str(value.get("oid")), value.get("size")
                if not store.has_blob(oid, size):
                    raise HubError(400, f"LFS object of {path} (sha256 {oid}) was never uploaded")
                size = size if size is not None else store.blob_path(oid).stat().st_size
                operations.append(AddFile(path, FileEntry.large(oid, size)))
            elif key == "deletedFile":
                operations.append(DeleteFile(_clean_path(value.get("path"))))
            elif key == "deletedFolder":
                operations.append(DeleteFolder(str(value.get("path", "")).strip("/")))
            else:
                raise HubError(400, f"Unknown commit operation: {key!r}")
        if header is None:
            raise HubError(400, "Malformed commit payload: the first line must be the header")
        branch = revision.removeprefix("refs/heads/")
        new = store.commit(repo, branch, operations, title=header.get("summary") or "Update",
                           message=header.get("description") or "", author=user,
                           parent_commit=header.get("parentCommit"))  # fmt: skip
        hub.stats["commits"] += 1
        hub.stats["regular_files_committed"] += sum(isinstance(op, AddFile) and not op.entry.lfs for op in operations)
        url = f"{hub.base_url(request)}/{repo.url_path}/commit/{new.oid}"
        return {"success": True, "commitOid": new.oid, "commitUrl": url, "pullRequestUrl": None}

    @app.post("/api/{tp}/{ns}/{name}/branch/{branch:path}")
    async def create_branch(request: Request, branch: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        body = await _json_body(request)
        if not _REF_RE.match(branch) or ".." in branch:
            raise HubError(400, f"Invalid branch name: {branch!r}")
        store.set_ref(repo, "branches", branch, store.resolve(repo, body.get("startingPoint") or DEFAULT_BRANCH))
        return {}

    @app.delete("/api/{tp}/{ns}/{name}/branch/{branch:path}")
    async def delete_branch(request: Request, branch: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        if branch == DEFAULT_BRANCH:
            raise HubError(403, "Cannot delete the default branch")
        store.set_ref(repo, "branches", branch, None)
        return {}

    @app.post("/api/{tp}/{ns}/{name}/tag/{revision:path}")
    async def create_tag(request: Request, revision: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        tag = (await _json_body(request)).get("tag")
        if not isinstance(tag, str) or not _REF_RE.match(tag) or ".." in tag:
            raise HubError(400, f"Invalid tag name: {tag!r}")
        store.set_ref(repo, "tags", tag, store.resolve(repo, revision))
        return {}

    @app.delete("/api/{tp}/{ns}/{name}/tag/{tag:path}")
    async def delete_tag(request: Request, tag: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        store.set_ref(repo, "tags", tag, None)
        return {}

    return app
