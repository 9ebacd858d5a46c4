"""Text Generation Inference's routes, so `huggingface_hub.InferenceClient` and TGI's own client work unchanged.

- ``POST /``: TGI's compat route (what ``InferenceClient.text_generation`` posts to): a list holding
  one ``{"generated_text"}``, or server-sent events when the body has ``"stream": true``;
- ``POST /generate``: ``{"generated_text", "details"}``; ``POST /generate_stream``: one event per token;
- ``POST /tokenize``: the tokens of ``inputs`` as sent, with their character offsets;
- ``GET /``, ``GET /health``, ``GET /ping``: health checks; ``GET /info``; ``GET /metrics`` (Prometheus text).

A token's ``text`` is what it adds to the decoded output (special tokens add nothing), so a
stream's texts join to its ``generated_text``. Answers carry TGI's ``x-compute-time`` (seconds),
``x-total-time`` (ms), ``x-prompt-tokens`` and ``x-generated-tokens`` headers; streams carry
``X-Accel-Buffering: no`` so proxies do not hold events back.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from peft_hybrid.serve.app import ServeState, collect, count, done, read_json, submit, tgi_error
from peft_hybrid.serve.batcher import Final, Job, TokenEvent
from peft_hybrid.serve.requests import RequestError, parse_request

# A stream's last event carries a token in TGI's shape even when the row ended without a new one.
_NO_TOKEN = {"id": 0, "text": "", "logprob": 0.0, "special": True}
STREAM_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}


def add_routes(app: FastAPI, state: ServeState) -> None:
    @app.post("/")
    async def compat(request: Request):
        return await _generate(state, request, stream=None, listed=True)

    @app.post("/generate")
    async def generate(request: Request):
        return await _generate(state, request, stream=False, listed=False)

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        return await _generate(state, request, stream=True, listed=False)

    @app.get("/")
    @app.get("/health")
    @app.get("/ping")
    async def health():
        return Response(status_code=200)

    @app.get("/info")
    async def info():
        adapters = state.cache.describe()
        return {**state.info, "adapters": adapters, "queue_depth": state.batcher.depth()}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        try:
            body = await read_json(state, request)
            text = parse_request(body, state.limits).inputs
        except RequestError as err:
            return tgi_error(err)
        encoded = state.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        pieces = state.tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        return [
            {"id": token, "text": piece, "start": start, "stop": stop}
            for token, piece, (start, stop) in zip(encoded["input_ids"], pieces, encoded["offset_mapping"])
        ]

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _generate(state: ServeState, http: Request, *, stream: bool | None, listed: bool) -> Response:
    started = time.monotonic()
    adapter = "-"  # the metrics label until the request names a servable adapter
    try:
        request = parse_request(await read_json(state, http), state.limits, stream=stream)
        job = await submit(state, request)
        adapter = request.adapter_id
    except RequestError as err:
        return _finish(state, tgi_error(err), adapter, started)
    if request.stream:
        return await _stream(state, job, adapter, started)
    try:
        tokens, final = await collect(job)
    except RequestError as err:
        return _finish(state, tgi_error(err), adapter, started)
    finally:
        await done(state, job)
    answer: dict[str, Any] = {"generated_text": final.generated_text}
    if request.details:  # TGI omits top_tokens and best_of_sequences when not asked for
        answer["details"] = {
            "finish_reason": final.finish_reason,
            "generated_tokens": final.generated_tokens,
            "seed": final.seed,
            "prefill": [],
            "tokens": tokens,
        }
    headers = timing_headers(state, final, started)
    return _finish(state, JSONResponse([answer] if listed else answer, headers=headers), adapter, started)


def timing_headers(state: ServeState, final: Final, started: float) -> dict[str, str]:
    elapsed = time.monotonic() - started
    return {
        "x-compute-type": state.info.get("model_device_type", "cpu"),
        "x-compute-time": str(elapsed),
        "x-total-time": str(int(elapsed * 1000)),
        "x-prompt-tokens": str(final.input_length),
        "x-generated-tokens": str(final.generated_tokens),
    }


async def _stream(state: ServeState, job: Job, adapter: str, started: float) -> Response:
    """Server-sent events; an error before the first token is a plain error response with its status."""
    try:
        first = await job.events.get()
    except asyncio.CancelledError:  # the handler was cancelled before the first token
        await done(state, job)
        raise
    if isinstance(first, RequestError):
        await done(state, job)
        return _finish(state, tgi_error(first), adapter, started)

    async def events():
        event = first
        status = 200
        try:
            while True:
                if isinstance(event, RequestError):
                    status = event.status
                    yield sse(event.body())
                    return
                yield sse(_stream_json(event, job.request.details))
                if event.final is not None:
                    return
                event = await job.events.get()
        finally:
            if not job.finished:  # the client disconnected mid-stream: its row stops at the next step
                status = 499
            await done(state, job)
            count(state, adapter, status, started)

    return StreamingResponse(events(), media_type="text/event-stream", headers=STREAM_HEADERS)


def _stream_json(event: TokenEvent, details: bool) -> dict[str, Any]:
    final = event.final
    out: dict[str, Any] = {
        "index": event.index,
        "token": event.token or _NO_TOKEN,
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


def sse(payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data:{text}\n\n".encode()


def _finish(state: ServeState, response: Response, adapter: str, started: float) -> Response:
    count(state, adapter, response.status_code, started)
    return response
