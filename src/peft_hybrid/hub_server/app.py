"""HTTP side of the local Hub test server: the endpoints the huggingface_hub client calls.

Answers, status codes and headers follow what the real Hub sends, so that the unmodified client
(and PEFT / transformers on top of it) behaves exactly as it would against huggingface.co,
refusals included. Storage lives in :mod:`._hub_store`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from peft_hybrid.hub_server.handling import (
    REF_RE,
    TYPE_PLURALS,
    HubState,
    error_response,
    json_body,
    metadata_errors,
    parse_range,
    raw_rev_and_path,
    read_file,
    truthy,
)
from peft_hybrid.hub_server.records import (
    DEFAULT_BRANCH,
    REPO_TYPES,
    ApiRefusal,
    RepoRef,
)
from peft_hybrid.hub_server.write_routes import commit_routes, lfs_routes


def create_app(data_dir: str | os.PathLike[str], users: Mapping[str, str]) -> FastAPI:
    """A FastAPI app that serves Hub repos stored under ``data_dir`` to ``users`` (name -> token)."""
    hub = HubState(data_dir, users)
    app = FastAPI(title="peft_hybrid local Hub", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub

    @app.exception_handler(ApiRefusal)
    async def _on_refusal(request: Request, exc: ApiRefusal) -> JSONResponse:
        return error_response(exc)

    # Registration order is matching order: the fixed /api/... paths come before /api/{tp}.
    _account_routes(app, hub)
    _read_routes(app, hub)
    _history_routes(app, hub)
    commit_routes(app, hub)
    lfs_routes(app, hub)
    _ref_routes(app, hub)
    return app


def _account_routes(app: FastAPI, hub: HubState) -> None:
    """Who am I, test statistics, and the repo lifecycle (create, delete, settings, YAML check)."""
    store = hub.store

    @app.get("/api/whoami-v2")
    async def whoami(request: Request) -> dict[str, Any]:
        user = hub.user(request)
        if user is None:
            raise ApiRefusal(401, "You must be authenticated to call whoami")
        token = {"displayName": "local test token", "role": "write"}
        return {
            "type": "user",
            "name": user,
            "fullname": user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": token},
        }

    @app.get("/_testing/stats")
    async def testing_stats() -> dict[str, int]:
        """Counters for tests (not a Hub endpoint); holds no names, paths or tokens."""
        return dict(hub.stats)

    @app.post("/api/repos/create")
    async def create_repo(request: Request) -> dict[str, Any]:
        user = hub.user(request)
        body = await json_body(request)
        if user is None:
            raise ApiRefusal(401, "You must be authenticated to create a repo")
        repo_type, name = body.get("type") or "model", body.get("name")
        namespace = body.get("organization") or user
        if repo_type not in REPO_TYPES or not isinstance(name, str):
            raise ApiRefusal(400, "Expected a repo 'name' and a 'type' among model, dataset, space")
        if namespace != user:
            raise ApiRefusal(
                403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"'
            )
        visibility = body.get("visibility")
        private = visibility == "private" if visibility is not None else bool(body.get("private", False))
        repo = RepoRef(repo_type, namespace, name)
        url = f"{hub.base_url(request)}/{repo.url_path}"
        try:
            store.create_repo(repo, private=private, author=user)
        except ApiRefusal as exc:
            if exc.status == 409:  # huggingface_hub reads "url" from the 409 when exist_ok=True
                raise ApiRefusal(409, exc.message, url=url) from None
            raise
        return {"url": url, "name": repo.repo_id, "id": repo.repo_id}

    @app.delete("/api/repos/delete")
    async def delete_repo(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        user = hub.user(request)
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES or not isinstance(body.get("name"), str):
            raise ApiRefusal(400, "Expected a repo 'name' and a 'type' among model, dataset, space")
        repo = RepoRef(repo_type, body.get("organization") or user or "", body["name"])
        hub.writable(request, repo)
        store.delete_repo(repo)
        return {}

    @app.put("/api/{tp}/{ns}/{name}/settings")
    async def repo_settings(request: Request) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        body = await json_body(request)
        if body.get("visibility") is not None:
            store.set_private(repo, body["visibility"] == "private")
        elif body.get("private") is not None:
            store.set_private(repo, bool(body["private"]))
        return {}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> JSONResponse:
        content = (await json_body(request)).get("content") or ""
        errors = metadata_errors(content)
        body = {"errors": [{"message": e} for e in errors], "warnings": []}
        return JSONResponse(body, status_code=400 if errors else 200)


def _read_routes(app: FastAPI, hub: HubState) -> None:
    """Listing repos, repo info, file trees and paths info."""
    store = hub.store

    @app.get("/api/{tp}")
    async def list_repos(request: Request, tp: str, author: str | None = None, search: str | None = None) -> list:
        if tp not in TYPE_PLURALS:
            raise ApiRefusal(404, "Not Found")
        user = hub.user(request)
        out = []
        for repo in store.list_repos(TYPE_PLURALS[tp]):
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
        return hub.repo_json(repo, meta, store.commit_at(repo, revision), blobs=truthy(blobs))

    @app.get("/api/{tp}/{ns}/{name}/tree/{rest:path}")
    async def list_tree(request: Request, recursive: str | None = None) -> list:
        repo = hub.repo(request)
        hub.readable(request, repo)
        revision, folder = raw_rev_and_path(request, marker_index=4)  # api/<tp>/<ns>/<name>/tree/<rev>
        commit = store.commit_at(repo, revision)
        folder = folder.strip("/")
        if folder not in commit.folders():
            raise ApiRefusal(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        prefix, deep = (folder + "/" if folder else ""), truthy(recursive)

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


def _history_routes(app: FastAPI, hub: HubState) -> None:
    """Refs, commit history, and file downloads (``/resolve``)."""
    store = hub.store

    @app.get("/api/{tp}/{ns}/{name}/refs")
    async def list_refs(request: Request) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.readable(request, repo)
        refs = store.refs(repo)

        def view(kind: str, prefix: str) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"{prefix}{n}", "targetCommit": oid} for n, oid in sorted(refs[kind].items())]

        return {
            "branches": view("branches", "refs/heads/"),
            "tags": view("tags", "refs/tags/"),
            "converts": [],
            "pullRequests": [],
        }

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
        revision, path = raw_rev_and_path(request, marker)
        commit = store.commit_at(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            # X-Repo-Commit lets the client cache the file's absence for this commit.
            raise ApiRefusal(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        if request.method == "HEAD":
            return Response(
                headers={**headers, "Content-Length": str(entry.size)}, media_type="application/octet-stream"
            )
        byte_range = parse_range(request.headers.get("range"), entry.size)
        start, end = byte_range or (0, entry.size - 1)
        headers["Content-Length"] = str(end - start + 1)
        if byte_range is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        return StreamingResponse(
            read_file(store.blob_path(entry.sha256), start, end - start + 1),
            status_code=206 if byte_range else 200,
            headers=headers,
            media_type="application/octet-stream",
        )


def _ref_routes(app: FastAPI, hub: HubState) -> None:
    """Creating and deleting branches and tags."""
    store = hub.store

    @app.post("/api/{tp}/{ns}/{name}/branch/{branch:path}")
    async def create_branch(request: Request, branch: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        body = await json_body(request)
        if not REF_RE.match(branch) or ".." in branch:
            raise ApiRefusal(400, f"Invalid branch name: {branch!r}")
        store.set_ref(repo, "branches", branch, store.resolve(repo, body.get("startingPoint") or DEFAULT_BRANCH))
        return {}

    @app.delete("/api/{tp}/{ns}/{name}/branch/{branch:path}")
    async def delete_branch(request: Request, branch: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        if branch == DEFAULT_BRANCH:
            raise ApiRefusal(403, "Cannot delete the default branch")
        store.set_ref(repo, "branches", branch, None)
        return {}

    @app.post("/api/{tp}/{ns}/{name}/tag/{revision:path}")
    async def create_tag(request: Request, revision: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        tag = (await json_body(request)).get("tag")
        if not isinstance(tag, str) or not REF_RE.match(tag) or ".." in tag:
            raise ApiRefusal(400, f"Invalid tag name: {tag!r}")
        store.set_ref(repo, "tags", tag, store.resolve(repo, revision))
        return {}

    @app.delete("/api/{tp}/{ns}/{name}/tag/{tag:path}")
    async def delete_tag(request: Request, tag: str) -> dict[str, Any]:
        repo = hub.repo(request)
        hub.writable(request, repo)
        store.set_ref(repo, "tags", tag, None)
        return {}
