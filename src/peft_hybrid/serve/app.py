"""The HTTP app: TGI's routes (`peft_hybrid.serve.tgi`) and OpenAI's (`peft_hybrid.serve.openai`) over one engine.

This module holds what both protocols share: the server's state, the API key check, the request
size limit, reading a JSON body, queueing a request as a `Job` and reading its events, and
errors in each protocol's shape (TGI: ``{"error": ..., "error_type": ...}``; OpenAI, on ``/v1/``:
``{"error": {"message", "type", "param", "code"}}``). Status codes are the protocol's: an
overloaded queue is 429 in both, a failed generation 424 in TGI and 500 in OpenAI.

With an API key every route but the health checks (``GET /``, ``/health``, ``/ping``) needs
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import StarletteHTTPException as HTTPException
from fastapi.responses import JSONResponse

from peft_hybrid.serve.adapters import AdapterCache
from peft_hybrid.serve.batcher import Batcher, Final, Job
from peft_hybrid.serve.grammar import GrammarCompiler
from peft_hybrid.serve.metrics import Metrics
from peft_hybrid.serve.requests import GenerateRequest, Limits, RequestError, check_text

OPEN_ROUTES = {"/health", "/ping"}
DEFAULT_MAX_REQUEST_BYTES = 2**20
_TGI_STATUS = {"overloaded": 429, "generation": 424}
_OPENAI = {  # error_type -> (status, OpenAI error type, code)
    "validation": (400, "invalid_request_error", None),
    "not_found": (404, "invalid_request_error", "model_not_found"),
    "authentication": (401, "invalid_request_error", "invalid_api_key"),
    "forbidden": (403, "invalid_request_error", "forbidden"),
    "too_large": (413, "invalid_request_error", "request_too_large"),
    "overloaded": (429, "rate_limit_exceeded", "overloaded"),
    "generation": (500, "server_error", None),
}


@dataclasses.dataclass
class ServeState:
    """Everything the routes need; the batcher's worker owns the model behind ``cache``."""

    model_id: str
    tokenizer: Any
    cache: AdapterCache
    batcher: Batcher
    limits: Limits
    metrics: Metrics
    info: dict[str, Any]
    api_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    grammars: GrammarCompiler | None = None
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    # Jobs queued or running per adapter id: unloading an adapter waits until each has ended.
    in_flight: collections.defaultdict = dataclasses.field(default_factory=lambda: collections.defaultdict(dict))
    _idle: asyncio.Condition | None = None

    def __post_init__(self) -> None:
        if self.grammars is None:
            self.grammars = GrammarCompiler(self.tokenizer, self.cache.model.base_model.config.vocab_size)

    def idle(self) -> asyncio.Condition:
        if self._idle is None:
            self._idle = asyncio.Condition()
        return self._idle


def create_app(state: ServeState) -> FastAPI:
    """The FastAPI app serving ``state``; its lifespan starts and stops the batch worker."""
    from peft_hybrid.serve import openai, tgi

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.batcher.start()
        yield
        await state.batcher.stop()

    app = FastAPI(title="peft-hybrid serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if state.api_key is not None and path not in OPEN_ROUTES and not (path == "/" and request.method == "GET"):
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {state.api_key}".encode()):
                message = "Unauthorized: send the API key as 'Authorization: Bearer <key>'."
                return error_response(request, RequestError(message, status=401, error_type="authentication"))
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > state.max_request_bytes:
            return error_response(request, _too_large(state))
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http")
        return error_response(
            request, RequestError(f"{err.detail}: {request.url.path}", status=err.status_code, error_type=kind)
        )

    tgi.add_routes(app, state)
    openai.add_routes(app, state)
    return app


async def read_json(state: ServeState, http: Request) -> Any:
    """The decoded body, refusing bodies over ``--max-request-bytes``, bad JSON and lone surrogates."""
    raw = bytearray()
    async for chunk in http.stream():
        raw += chunk
        if len(raw) > state.max_request_bytes:
            raise _too_large(state)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"The request body is not valid JSON ({err}).") from None
    check_text(body)
    return body


async def submit(state: ServeState, request: GenerateRequest) -> Job:
    """Queue ``request``, its grammar compiled into its row's logits processor."""
    state.cache.check(request.adapter_id)
    if request.grammar is not None:
        processor = await asyncio.to_thread(state.grammars.processor, request.grammar)
        request = dataclasses.replace(request, logits_processor=processor)
    job = Job(request, asyncio.get_running_loop())
    state.batcher.submit(job)  # the scheduler tokenizes it (`peft_hybrid.serve.engine.prepare`)
    state.in_flight[request.adapter_id][id(job)] = job  # by id: a Job (a dataclass) is not hashable
    return job


async def done(state: ServeState, job: Job) -> None:
    """The handler of ``job`` has finished with it: a client gone early frees its row, unloads may proceed."""
    if not job.finished:
        job.cancelled = True
    jobs = state.in_flight[job.request.adapter_id]
    for key in [key for key, other in jobs.items() if other is job or other.finished or other.cancelled]:
        del jobs[key]  # also jobs whose handler never got here (a client gone before its stream began)
    async with state.idle():
        state.idle().notify_all()


async def wait_idle(state: ServeState, adapter: str) -> None:
    """Until every job for ``adapter`` has ended (re-checked as handlers finish, and each second for
    a job whose client left before its stream began, whose handler never gets to `done`)."""

    def idle() -> bool:
        jobs = state.in_flight.get(adapter, {})
        return all(job.finished or job.cancelled for job in jobs.values())

    async with state.idle():
        while not idle():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.idle().wait(), 1.0)


async def collect(job: Job) -> tuple[list[dict], Final]:
    """Every token event of ``job`` and its end; its error raised."""
    tokens = []
    while True:
        event = await job.events.get()
        if isinstance(event, RequestError):
            raise event
        if event.token is not None:
            tokens.append(event.token)
        if event.final is not None:
            return tokens, event.final


def is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def error_response(request: Request, err: RequestError) -> JSONResponse:
    """``err`` in the shape and status of the protocol ``request`` speaks."""
    return openai_error(err) if is_openai(request) else tgi_error(err)


def tgi_error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=_TGI_STATUS.get(err.error_type, err.status), headers=err.headers)


def openai_error(err: RequestError) -> JSONResponse:
    status, kind, code = _OPENAI.get(err.error_type, (err.status, "invalid_request_error", None))
    body = {"error": {"message": err.message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=err.headers)


def count(state: ServeState, adapter: str, status: int, started: float) -> None:
    state.metrics.requests.labels(adapter, str(status)).inc()
    state.metrics.latency.labels(adapter).observe(time.monotonic() - started)


def _too_large(state: ServeState) -> RequestError:
    return RequestError(
        f"The request body is over {state.max_request_bytes} bytes (--max-request-bytes).",
        status=413,
        error_type="too_large",
    )


__all__ = ["ServeState", "create_app"]
