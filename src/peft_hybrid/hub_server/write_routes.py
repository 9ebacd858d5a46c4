"""The local Hub server's write routes: preupload, commits, and the LFS batch, upload and verify endpoints."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from peft_hybrid.hub_server.handling import (
    HubState,
    clean_path,
    gitignored,
    json_body,
    truthy,
)
from peft_hybrid.hub_server.records import (
    LFS_SIZE_THRESHOLD,
    AddFile,
    ApiRefusal,
    DeleteFile,
    DeleteFolder,
    FileEntry,
    Operation,
    default_gitattributes,
    lfs_patterns,
    matches_any,
)
from peft_hybrid.hub_server.server import STALL_UPLOADS_ENV


def commit_routes(app: FastAPI, hub: HubState) -> None:
    """The preupload check and the commit endpoint (NDJSON operations)."""
    store = hub.store

    @app.post("/api/{tp}/{ns}/{name}/preupload/{revision:path}")
    async def preupload(request: Request, revision: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        body = await json_body(request)
        commit = store.commit_at(repo, revision)
        # Like the Hub, the repo's own .gitattributes decides which paths go through LFS.
        patterns = lfs_patterns(hub.text_at(commit, ".gitattributes") or default_gitattributes())
        gitignore = body.get("gitIgnore") or hub.text_at(commit, ".gitignore")
        files = []
        for item in body.get("files", []):
            path, size = clean_path(item.get("path")), int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample") or "")
            lfs = size >= LFS_SIZE_THRESHOLD or b"\0" in sample or matches_any(path, patterns)
            existing = commit.files.get(path)
            # The oid lets the client drop files whose content the revision already holds.
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": gitignored(path, gitignore),
                    "oid": existing.etag if existing else None,
                }
            )
        return {"files": files, "commitOid": commit.oid}

    @app.post("/api/{tp}/{ns}/{name}/commit/{revision:path}")
    async def commit(request: Request, revision: str, create_pr: str | None = None) -> dict[str, Any]:
        repo = hub.repo(request)
        user = hub.writable(request, repo)
        if truthy(create_pr):
            raise ApiRefusal(400, "Pull requests are not supported by this local Hub server")
        header: dict[str, Any] | None = None
        operations: list[Operation] = []
        for line in (await request.body()).splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ApiRefusal(400, "Malformed commit payload: expected NDJSON lines {key, value}") from None
            if key == "header":
                header = value
            elif key == "file":
                raw = value.get("content", "")
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                operations.append(AddFile(clean_path(value.get("path")), store.put_bytes(data)))
            elif key == "lfsFile":
                path, oid, size = clean_path(value.get("path")), str(value.get("oid")), value.get("size")
                if not store.has_blob(oid, size):
                    raise ApiRefusal(400, f"LFS object of {path} (sha256 {oid}) was never uploaded")
                size = size if size is not None else store.blob_path(oid).stat().st_size
                operations.append(AddFile(path, FileEntry.large(oid, size)))
            elif key == "deletedFile":
                operations.append(DeleteFile(clean_path(value.get("path"))))
            elif key == "deletedFolder":
                operations.append(DeleteFolder(str(value.get("path", "")).strip("/")))
            else:
                raise ApiRefusal(400, f"Unknown commit operation: {key!r}")
        if header is None:
            raise ApiRefusal(400, "Malformed commit payload: the first line must be the header")
        branch = revision.removeprefix("refs/heads/")
        new = store.commit(
            repo,
            branch,
            operations,
            title=header.get("summary") or "Update",
            message=header.get("description") or "",
            author=user,
            parent_commit=header.get("parentCommit"),
        )
        hub.stats["commits"] += 1
        hub.stats["regular_files_committed"] += sum(isinstance(op, AddFile) and not op.entry.lfs for op in operations)
        url = f"{hub.base_url(request)}/{repo.url_path}/commit/{new.oid}"
        return {"success": True, "commitOid": new.oid, "commitUrl": url, "pullRequestUrl": None}


def lfs_routes(app: FastAPI, hub: HubState) -> None:
    """The LFS batch API, the upload of LFS objects and their verification."""
    store = hub.store
    # A test hook: each LFS upload stops for good once its first bytes are on disk, so a test can
    # kill the server at a known point mid-upload, however fast the machine sends the rest.
    stall = os.environ.get(STALL_UPLOADS_ENV) == "1"

    @app.post("/{ns}/{name}.git/info/lfs/objects/batch")
    @app.post("/{tp}/{ns}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch(request: Request) -> JSONResponse:
        repo = hub.repo(request)
        hub.writable(request, repo)
        body = await json_body(request)
        if body.get("operation") != "upload":
            raise ApiRefusal(400, "Only LFS uploads are served here; download files through /resolve")
        base, objects = hub.base_url(request), []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (
                isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int) and size >= 0
            ):
                objects.append(
                    {
                        "oid": str(oid),
                        "size": size if isinstance(size, int) else 0,
                        "error": {"code": 422, "message": "Invalid oid or size"},
                    }
                )
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
                    if stall and chunk:
                        f.flush()
                        await asyncio.Event().wait()  # never set: the test kills the server
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
        body = await json_body(request)
        if not store.has_blob(str(body.get("oid")), body.get("size")):
            raise ApiRefusal(404, f"LFS object {body.get('oid')} of size {body.get('size')} was not uploaded")
        return {"success": True}
