"""Runtime adapters, with vLLM's routes and bodies: ``POST /v1/load_lora_adapter``, ``/v1/unload_lora_adapter``.

``{"lora_name": NAME, "lora_path": FOLDER_OR_HUB_ID}`` loads one of this library's adapters or a
vanilla PEFT LoRA folder onto the base, as ``NAME``; the path must match an ``--allow-adapter``
pattern (`peft_hybrid.serve.adapters.AdapterCache.resolve`), and the routes need the API key
like every other. ``{"lora_name": NAME}`` unloads it: new requests for it are refused at once
(404), the ones already queued or running finish first, then it leaves the model. Loaded adapters
are listed by ``/v1/models`` and ``/info``. Answers are vLLM's plain-text ``Success: ...``.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from peft_hybrid.serve.adapters import AdapterBusy
from peft_hybrid.serve.app import ServeState, openai_error, read_json, wait_idle
from peft_hybrid.serve.openai_requests import parse
from peft_hybrid.serve.requests import RequestError, Str


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: Str
    lora_path: Str


class UnloadBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: Str


def add_routes(app: FastAPI, state: ServeState) -> None:
    @app.post("/v1/load_lora_adapter")
    async def load(request: Request):
        try:
            body = parse(LoadBody, await read_json(state, request))
            state.cache.add(body.lora_name, body.lora_path)
            try:  # the download off the worker; only attaching it waits for a gap between steps
                folder = await asyncio.to_thread(state.cache.fetch, body.lora_name)
            except RequestError:
                state.cache.forget(body.lora_name)
                raise
            try:
                await state.batcher.call_in_worker(lambda: state.cache.load_now(body.lora_name, folder))
            except AdapterBusy:  # every slot is held right now: it loads on its first request instead
                pass
        except RequestError as err:
            return openai_error(err)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request):
        try:
            body = parse(UnloadBody, await read_json(state, request))
            name = body.lora_name
            if name not in state.cache.sources:
                raise RequestError(
                    f"adapter {name!r} is not loaded (loaded: {sorted(state.cache.sources)}).",
                    status=404,
                    error_type="not_found",
                )
            state.cache.drain(name)
        except RequestError as err:
            return openai_error(err)
        await wait_idle(state, name)
        await state.batcher.call_in_worker(lambda: state.cache.unload(name))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
