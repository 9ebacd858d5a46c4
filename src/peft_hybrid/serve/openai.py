"""OpenAI-compatible routes (vLLM's conventions), over the same engine as the TGI routes.

- ``GET /v1/models``: the base and every adapter loaded or registered (``parent`` is the base);
- ``POST /v1/completions``, ``POST /v1/chat/completions``: requests read by
  `peft_hybrid.serve.openai_requests`; ``stream: true`` sends ``data: {chunk}`` events and then
  ``data: [DONE]``; ``stream_options.include_usage`` adds a last chunk with ``usage``;
- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` and ``POST /v1/unload_lora_adapter``
  ``{"lora_name"}``: runtime adapters (`peft_hybrid.serve.adapter_routes`).

A greedy completion (``temperature: 0``) is what ``/generate`` answers for that adapter, except
that, as in OpenAI, a stop sequence that ended the text is not part of it. Finish reasons are
OpenAI's: ``stop`` (end of sequence or a stop sequence) or ``length``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from peft_hybrid.modeling.mixed import BASE_ADAPTER
from peft_hybrid.serve.app import ServeState, collect, count, done, openai_error, read_json, submit
from peft_hybrid.serve.batcher import Job
from peft_hybrid.serve.openai_requests import ChatBody, CompletionBody, parse
from peft_hybrid.serve.requests import RequestError
from peft_hybrid.serve.tgi import STREAM_HEADERS

# What huggingface_hub.InferenceClient sends as the model of a plain server (0.x: "tgi", 1.x and later: "dummy").
BASE_ALIASES = {"tgi", "dummy"}
_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def add_routes(app: FastAPI, state: ServeState) -> None:
    from peft_hybrid.serve import adapter_routes

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": model_cards(state)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _answer(state, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _answer(state, request, chat=True)

    adapter_routes.add_routes(app, state)


def model_cards(state: ServeState) -> list[dict[str, Any]]:
    card = {"object": "model", "created": state.created, "owned_by": "peft-hybrid"}
    cards = [{"id": state.model_id, **card, "root": state.model_id, "parent": None}]
    for row in state.cache.describe():
        cards.append(
            {"id": row["id"], **card, "root": state.cache.sources.get(row["id"], row["id"]), "parent": state.model_id}
        )
    return cards


def adapter_for(state: ServeState, model: str | None) -> str:
    """The adapter id a request's ``model`` names; 404 ``model_not_found`` when none."""
    if not model or model == state.model_id or model in BASE_ALIASES:
        return BASE_ADAPTER
    try:
        state.cache.check(model)
    except RequestError:
        names = [card["id"] for card in model_cards(state)]
        raise RequestError(
            f"The model {model!r} does not exist: served models are {names}.", status=404, error_type="not_found"
        ) from None
    return model


async def _answer(state: ServeState, http: Request, *, chat: bool) -> Response:
    started = time.monotonic()
    adapter, jobs = "-", []
    try:
        body = parse(ChatBody if chat else CompletionBody, await read_json(state, http))
        adapter = adapter_for(state, body.model)
        texts = [body.user_text()] if chat else body.prompts()
        requests = [r for text in texts for r in body.generate_requests(text, adapter, state.limits)]
        for request in requests:
            jobs.append(await submit(state, request))
    except RequestError as err:
        for job in jobs:
            await done(state, job)
        return _refused(state, err, adapter, started)
    reply = _Reply(state, body, chat, jobs, per_prompt=len(jobs) // len(texts))
    if body.stream:
        return StreamingResponse(
            reply.stream(adapter, started), media_type="text/event-stream", headers=STREAM_HEADERS
        )
    try:
        results = await asyncio.gather(*(collect(job) for job in jobs))
    except RequestError as err:
        return _refused(state, err, adapter, started)
    finally:
        for job in jobs:
            await done(state, job)
    count(state, adapter, 200, started)
    return JSONResponse(reply.whole([final for _, final in results]))


def _refused(state: ServeState, err: RequestError, adapter: str, started: float) -> Response:
    response = openai_error(err)
    count(state, adapter, response.status_code, started)
    return response


class _Reply:
    """The OpenAI answer of one request's jobs (one per prompt and choice), whole or as chunks."""

    def __init__(self, state: ServeState, body, chat: bool, jobs: list[Job], per_prompt: int) -> None:
        self.state = state
        self.chat = chat
        self.jobs = jobs
        self.per_prompt = per_prompt
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        prefix, self.object = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
        self.head = {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": self.object,
            "created": int(time.time()),
            "model": body.model or state.model_id,
            "system_fingerprint": f"peft-hybrid-{state.info.get('version', '')}",
        }

    def whole(self, finals) -> dict[str, Any]:
        choices = []
        for index, (job, final) in enumerate(zip(self.jobs, finals)):
            text = _without_stop(final.generated_text, job, final.finish_reason)
            choice: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": _FINISH[final.finish_reason]}
            choice.update({"message": {"role": "assistant", "content": text}} if self.chat else {"text": text})
            choices.append(choice)
        return {**self.head, "choices": choices, "usage": self._usage(finals)}

    def _usage(self, finals) -> dict[str, int]:
        prompt = sum(final.input_length for final in finals[:: self.per_prompt])
        completion = sum(final.generated_tokens for final in finals)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _chunk(self, index: int, text: str | None, finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": text or ""}
        else:
            choice["text"] = text or ""
        return {**self.head, "object": f"{self.object}.chunk" if self.chat else self.object, "choices": [choice]}

    async def stream(self, adapter: str, started: float):
        state_status = 200  # what the metrics count: 499 when the client left early
        events: asyncio.Queue = asyncio.Queue()
        pumps = [asyncio.create_task(_pump(i, job, events)) for i, job in enumerate(self.jobs)]
        held = [_Holdback(job.request.stop) for job in self.jobs]
        finals: list[Any] = [None] * len(self.jobs)
        try:
            open_jobs = len(self.jobs)
            while open_jobs:
                index, event = await events.get()
                if isinstance(event, RequestError):
                    state_status = openai_error(event).status_code
                    yield _sse(openai_error(event).body.decode())
                    return
                piece = held[index].feed(event.token["text"] if event.token else "")
                if event.final is not None:
                    finals[index] = event.final
                    open_jobs -= 1
                    piece += held[index].flush(event.final.finish_reason == "stop_sequence")
                    yield _sse(self._chunk(index, piece, _FINISH[event.final.finish_reason]))
                elif piece:
                    yield _sse(self._chunk(index, piece, None))
            if self.include_usage:
                yield _sse(
                    {
                        **self.head,
                        "object": self._chunk(0, "", None)["object"],
                        "choices": [],
                        "usage": self._usage(finals),
                    }
                )
            yield _sse("[DONE]")
        finally:
            for pump in pumps:
                pump.cancel()
            if any(not job.finished for job in self.jobs):
                state_status = 499 if state_status == 200 else state_status
            for job in self.jobs:
                await done(self.state, job)
            count(self.state, adapter, state_status, started)


async def _pump(index: int, job: Job, events: asyncio.Queue) -> None:
    while True:
        event = await job.events.get()
        await events.put((index, event))
        if isinstance(event, RequestError) or event.final is not None:
            return


class _Holdback:
    """Streams text but holds back what may be the start of a stop sequence (OpenAI leaves stops out)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, piece: str) -> str:
        self.pending += piece
        keep = max(
            (k for stop in self.stops for k in range(1, len(stop) + 1) if self.pending.endswith(stop[:k])), default=0
        )
        out, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        return out

    def flush(self, stopped: bool) -> str:
        text, self.pending = self.pending, ""
        if stopped:
            for stop in self.stops:
                if text.endswith(stop):
                    return text[: -len(stop)]
        return text


def _without_stop(text: str, job: Job, reason: str) -> str:
    if reason == "stop_sequence":
        for stop in job.request.stop:
            if text.endswith(stop):
                return text[: -len(stop)]
    return text


def _sse(payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
