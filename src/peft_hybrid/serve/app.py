"""The HTTP routes, in Text Generation Inference's shapes, so `huggingface_hub.InferenceClient` works unchanged.

- ``POST /``: TGI's compat route (what ``InferenceClient.text_generation`` posts to): a list holding
  one ``{"generated_text"}``, or server-sent events when the body has ``"stream": true``;
- ``POST /generate``: ``{"generated_text", "details"}``; ``POST /generate_stream``: one event per token;
- ``GET /info``, ``GET /health``, ``GET /metrics`` (Prometheus text).

A token's ``text`` is what it adds to the decoded output (special tokens add nothing), so a
stream's texts join to its ``generated_text``. Errors are TGI's JSON, ``{"error": ...,
"error_type": ...}``. With an API key every route but ``/health`` needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from peft_hybrid.serve.adapters import AdapterCache
from peft_hybrid.serve.batcher import Batcher, Final, Job, TokenEvent
from peft_hybrid.serve.metrics import Metrics
from peft_hybrid.serve.requests import Limits, RequestError, parse_request

_OPEN_ROUTES = {"/health"}
# A stream's last event carries a token in TGI's shape even when the row ended without a new one.
_NO_TOKEN = {"id": 0, "text": "", "logprob": 0.0, "special": True}


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


def create_app(state: ServeState) -> FastAPI:
    """The FastAPI app serving ``state``; its lifespan starts and stops the batch worker."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.batcher.start()
        yield
        await state.batcher.stop()

    app = FastAPI(title="peft-hybrid serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if state.api_key is not None and request.url.path not in _OPEN_ROUTES:
            sent = request.headers.get("authorization", "")
            expected = f"Bearer {state.api_key}"
            if not hmac.compare_digest(sent.encode(), expected.encode()):
                return _error(
                    RequestError(
                        "Unauthorized: send the API key as 'Authorization: Bearer <key>'.",
                        status=401,
                        error_type="authentication",
                    )
                )
        return await call_next(request)

    @app.post("/")
    async def compat(request: Request):
        return await _generate(state, request, stream=None, listed=True)

    @app.post("/generate")
    async def generate(request: Request):
        return await _generate(state, request, stream=False, listed=False)

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        return await _generate(state, request, stream=True, listed=False)

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/info")
    async def info():
        return {**state.info, "adapters": state.cache.describe(), "queue_depth": state.batcher.depth()}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _generate(state: ServeState, http: Request, *, stream: bool | None, listed: bool) -> Response:
    started = time.monotonic()
    adapter = "-"  # the metrics label until the request names a servable adapter
    try:
        body = await _json_body(http)
        request = parse_request(body, state.limits, stream=stream)
        state.cache.check(request.adapter_id)
        adapter = request.adapter_id
        job = Job(request, asyncio.get_running_loop())
        state.batcher.submit(job)
    except RequestError as err:
        return _finish(state, _error(err), adapter, started)
    if request.stream:
        return await _stream(state, job, adapter, started)
    try:
        tokens, final = await _collect(job)
    except RequestError as err:
        return _finish(state, _error(err), adapter, started)
    finally:
        if not job.finished:  # the client went away while waiting: free the row
            job.cancelled = True
    answer = {"generated_text": final.generated_text}
    if request.details:
        answer["details"] = {
            "finish_reason": final.finish_reason,
            "generated_tokens": final.generated_tokens,
            "seed": final.seed,
            "prefill": [],
            "tokens": tokens,
            "top_tokens": None,
            "best_of_sequences": None,
        }
    return _finish(state, JSONResponse([answer] if listed else answer), adapter, started)


async def _collect(job: Job) -> tuple[list[dict], Final]:
    tokens = []
    while True:
        event = await job.events.get()
        if isinstance(event, RequestError):
            raise event
        if event.token is not None:
            tokens.append(event.token)
        if event.final is not None:
            return tokens, event.final


async def _stream(state: ServeState, job: Job, adapter: str, started: float) -> Response:
    """Server-sent events; an error before the first token is a plain error response with its status."""
    try:
        first = await job.events.get()
    except asyncio.CancelledError:  # the handler was cancelled before the first token
        job.cancelled = True
        raise
    if isinstance(first, RequestError):
        return _finish(state, _error(first), adapter, started)

    async def events():
        event = first
        status = 200
        try:
            while True:
                if isinstance(event, RequestError):
                    status = event.status
                    yield _sse(event.body())
                    return
                yield _sse(_stream_json(event, job.request.details))
                if event.final is not None:
                    return
                event = await job.events.get()
        finally:
            if not job.finished:  # the client disconnected mid-stream: its row stops at the next step
                job.cancelled = True
                status = 499
            state.metrics.requests.labels(adapter, str(status)).inc()
            state.metrics.latency.labels(adapter).observe(time.monotonic() - started)

    return StreamingResponse(events(), media_type="text/event-stream")


def _stream_json(event: TokenEvent, details: bool) -> dict[str, Any]:
    final = event.final
    out: dict[str, Any] = {
        "index": event.index,
        "token": event.token or _NO_TOKEN,
        "top_tokens": None,
        "generated_text": final.generated_text if final is not None else None,
        "details": None,
    }
    if final is not None and details:
        out["details"] = {
            "finish_reason": final.finish_reason,
            "generated_tokens": final.generated_tokens,
            "seed": final.seed,
            "input_length": final.input_length,
        }
    return out


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data:{json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def _json_body(http: Request) -> Any:
    raw = await http.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"The request body is not valid JSON ({err}).") from None


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _finish(state: ServeState, response: Response, adapter: str, started: float) -> Response:
    state.metrics.requests.labels(adapter, str(response.status_code)).inc()
    state.metrics.latency.labels(adapter).observe(time.monotonic() - started)
    return response


__all__ = ["ServeState", "create_app"]
