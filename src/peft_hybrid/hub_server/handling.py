"""Request handling for the local Hub test server: who is asking, what they may see, JSON shapes.

The routes in :mod:`._hub_app` call into this; storage lives in :mod:`._hub_store`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import yaml
from fastapi import Request
from fastapi.responses import JSONResponse

from peft_hybrid.hub_server.records import (
    REPO_TYPES,
    ApiRefusal,
    Commit,
    FileEntry,
    RepoRef,
    lfs_pointer,
    matches_any,
)
from peft_hybrid.hub_server.store import (
    HubStore,
)

TYPE_PLURALS = {f"{t}s": t for t in REPO_TYPES}
_INVALID_TOKEN = "Invalid credentials in Authorization header"
_TICKET_TTL_S = 3600.0
_READ_CHUNK = 1 << 20
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


def truthy(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes"}


def clean_path(path: Any) -> str:
    """A repo-relative file path, refusing anything that could escape or confuse the tree."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise ApiRefusal(400, f"Invalid path in repo: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")) or path.split("/")[0] == ".git":
        raise ApiRefusal(400, f"Invalid path in repo: {path!r}")
    return path


def raw_rev_and_path(request: Request, marker_index: int) -> tuple[str, str]:
    """Revision and file path that follow the segment at ``marker_index`` ("tree", "resolve").

    The client percent-encodes '/' inside a revision (``refs%2Fpr%2F1``) but not inside a file
    path, so the raw path is split on '/' first and each part decoded afterwards.
    """
    raw = request.scope.get("raw_path") or request.url.path.encode()
    segments = raw.decode("latin-1").split("?", 1)[0].split("/")[1:]
    revision = unquote(segments[marker_index + 1]) if len(segments) > marker_index + 1 else ""
    return revision, unquote("/".join(segments[marker_index + 2 :]))


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
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
        raise ApiRefusal(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def read_file(path: os.PathLike[str], start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(_READ_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def error_response(exc: ApiRefusal) -> JSONResponse:
    # Header values must be latin-1; a path in a message may not be.
    message = exc.message.encode("ascii", "backslashreplace").decode()
    headers = {"X-Error-Message": message, **exc.headers}
    if exc.code:
        headers["X-Error-Code"] = exc.code
    return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status, headers=headers)


class HubState:
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
            raise ApiRefusal(401, _INVALID_TOKEN)
        token = token.strip()
        for name, known in self._users.items():
            if secrets.compare_digest(known.encode(), token.encode()):
                return name
        raise ApiRefusal(401, _INVALID_TOKEN)

    def repo(self, request: Request) -> RepoRef:
        params = request.path_params
        repo_type = TYPE_PLURALS.get(params.get("tp", "models"))
        if repo_type is None:
            raise ApiRefusal(404, "Not Found")
        return RepoRef(repo_type, params["ns"], params["name"])

    def readable(self, request: Request, repo: RepoRef) -> tuple[str | None, dict[str, Any]]:
        user = self.user(request)
        meta = self.store.meta(repo)
        if meta is None or (meta["private"] and user != repo.namespace):
            # One answer for missing and for hidden repos, so private names do not leak.
            raise ApiRefusal(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return user, meta

    def writable(self, request: Request, repo: RepoRef) -> str:
        user, _ = self.readable(request, repo)
        if user is None:
            raise ApiRefusal(401, "You must be authenticated to write to this repository")
        if user != repo.namespace:
            raise ApiRefusal(403, f"You don't have the rights to write to {repo.repo_id}")
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
            raise ApiRefusal(403, "Invalid or expired upload credential")
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


async def json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ApiRefusal(400, f"Invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiRefusal(400, "JSON body must be an object")
    return data


def metadata_errors(readme: str) -> list[str]:
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


def gitignored(path: str, gitignore: str | None) -> bool:
    """Simplified .gitignore match (no negation): enough for the client's shouldIgnore flag."""
    if not gitignore:
        return False
    patterns = [line.strip() for line in gitignore.splitlines() if line.strip() and line.strip()[0] not in "#!"]
    folders = [p.strip("/") + "/" for p in patterns if p.endswith("/")]
    return any(path.startswith(f) or f"/{f}" in path for f in folders) or matches_any(path, patterns)
