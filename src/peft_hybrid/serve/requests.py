"""Reading a TGI request body: ``{"inputs": str, "parameters": {...}, "stream": bool}``.

Every field is checked before a request is queued; a bad one is refused with TGI's error JSON
(``{"error": ..., "error_type": "validation"}``, status 422) naming the field. Parameters sent as
``null`` mean "the default", as `huggingface_hub.InferenceClient` sends every parameter it knows.
TGI parameters this server does not implement are refused when set, never silently ignored.

Example:
    >>> limits = Limits(max_input_tokens=512, max_new_tokens_limit=256)
    >>> request = parse_request({"inputs": "Hi", "parameters": {"adapter_id": "samsum", "top_k": 5}}, limits)
    >>> request.adapter_id, request.do_sample, request.top_k
    ('samsum', True, 5)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from peft_hybrid.modeling.mixed import BASE_ADAPTER

# TGI parameters that are accepted only at their "off" value: (name, what counts as off).
_OFF_ONLY = {
    "best_of": (None, 1),
    "decoder_input_details": (None, False),
    "watermark": (None, False),
    "grammar": (None,),
    "frequency_penalty": (None, 0, 0.0),
    "top_n_tokens": (None, 0),
    "adapter_parameters": (None,),
}
_PARAMETERS = {
    "adapter_id",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "typical_p",
    "repetition_penalty",
    "seed",
    "stop",
    "details",
    "truncate",
    "return_full_text",
    *_OFF_ONLY,
}


class RequestError(Exception):
    """A request the server refuses: the HTTP status, TGI's ``error_type`` and a message naming the field."""

    def __init__(
        self, message: str, *, status: int = 422, error_type: str = "validation", headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for (the server's ``--max-input-tokens`` etc.)."""

    max_input_tokens: int = 512
    max_new_tokens_limit: int = 256
    max_stop_sequences: int = 4


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """One validated request. ``max_new_tokens=None`` takes the adapter's default."""

    inputs: str
    adapter_id: str = BASE_ADAPTER
    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    details: bool = False
    truncate: int | None = None
    return_full_text: bool = False
    stream: bool = False
    # Structured output: ``(generated_ids, scores [vocab]) -> scores`` for this row, applied every step
    # after the repetition penalty and before sampling or the greedy argmax.
    logits_processor: Callable[[list[int], Any], Any] | None = dataclasses.field(default=None, compare=False)

    def sampling_key(self) -> tuple:
        """Requests with equal keys decode with the same settings, so they can share one batch.

        A seeded sampled request runs in a batch of its own seed: the same seed gives the same text.
        """
        if not self.do_sample:
            return ("greedy", self.repetition_penalty)
        warp = (self.temperature, self.top_p, self.top_k, self.typical_p, self.repetition_penalty)
        return ("sample", *warp, self.seed)


def parse_request(body: Any, limits: Limits, *, stream: bool | None = None) -> GenerateRequest:
    """A `GenerateRequest` from a decoded JSON body, or a `RequestError` naming the bad field.

    ``stream``: the route decides (``/generate``: False, ``/generate_stream``: True); ``None``
    (TGI's compat route ``/``) reads the body's ``"stream"``.
    """
    if not isinstance(body, dict):
        raise RequestError('The request body must be a JSON object: {"inputs": "...", "parameters": {...}}.')
    unknown = sorted(set(body) - {"inputs", "parameters", "stream"})
    if unknown:
        raise RequestError(f"Unknown field(s) {unknown}; a request has `inputs`, `parameters` and `stream`.")
    inputs = body.get("inputs")
    if inputs is None:
        raise RequestError("`inputs` is missing: send the text to generate from.")
    if not isinstance(inputs, str):
        raise RequestError(f"`inputs` must be a string, not {type(inputs).__name__}.")
    if not inputs.strip():
        raise RequestError("`inputs` cannot be empty.")
    wants_stream = _typed(body, "stream", bool, "a boolean", where="")
    if stream is None:
        stream = bool(wants_stream)
    elif wants_stream is not None and wants_stream != stream:
        route = "/generate_stream" if wants_stream else "/generate"
        raise RequestError(f"`stream` is {str(wants_stream).lower()} on a route that does not; use {route}.")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("`parameters` must be a JSON object.")
    return GenerateRequest(inputs=inputs, stream=stream, **_parameters(params, limits))


def _parameters(params: dict, limits: Limits) -> dict[str, Any]:
    unknown = sorted(set(params) - _PARAMETERS)
    if unknown:
        raise RequestError(f"Unknown parameter(s) {unknown}; supported: {sorted(_PARAMETERS - set(_OFF_ONLY))}.")
    for name, off in _OFF_ONLY.items():
        if params.get(name) not in off:
            raise RequestError(f"`{name}` is not supported by this server; leave it unset.")
    out: dict[str, Any] = {}
    adapter = _typed(params, "adapter_id", str, "a string")
    out["adapter_id"] = adapter if adapter else BASE_ADAPTER
    max_new = _typed(params, "max_new_tokens", int, "an integer")
    if max_new is not None and max_new <= 0:
        raise RequestError("`max_new_tokens` must be strictly positive.")
    if max_new is not None and max_new > limits.max_new_tokens_limit:
        raise RequestError(
            f"`max_new_tokens` must be <= {limits.max_new_tokens_limit} (the server's limit). Given: {max_new}."
        )
    out["max_new_tokens"] = max_new
    out.update(_sampling(params))
    out["seed"] = _typed(params, "seed", int, "an integer")
    if out["seed"] is not None and out["seed"] < 0:
        raise RequestError("`seed` must be a non-negative integer.")
    out["stop"] = _stop(params, limits)
    out["details"] = bool(_typed(params, "details", bool, "a boolean"))
    out["return_full_text"] = bool(_typed(params, "return_full_text", bool, "a boolean"))
    truncate = _typed(params, "truncate", int, "an integer")
    if truncate is not None and not 0 < truncate <= limits.max_input_tokens:
        raise RequestError(
            f"`truncate` must be strictly positive and <= {limits.max_input_tokens}. Given: {truncate}."
        )
    out["truncate"] = truncate
    return out


# Sampling parameters: (type, what the type is called, the valid range, how the range reads).
_SAMPLING = {
    "temperature": (float, "a number", lambda v: v > 0, "strictly positive"),
    "top_p": (float, "a number", lambda v: 0 < v < 1, "> 0.0 and < 1.0"),
    "top_k": (int, "an integer", lambda v: v > 0, "strictly positive"),
    "typical_p": (float, "a number", lambda v: 0 < v < 1, "> 0.0 and < 1.0"),
    "repetition_penalty": (float, "a number", lambda v: v > 0, "strictly positive"),
}


def _sampling(params: dict) -> dict[str, Any]:
    """The sampling settings; any warper set means sampling, as in TGI."""
    out = {}
    for name, (kind, what, valid, rule) in _SAMPLING.items():
        value = _typed(params, name, kind, what)
        if value is not None and not valid(value):
            raise RequestError(f"`{name}` must be {rule}.")
        out[name] = value
    if out["repetition_penalty"] == 1.0:
        out["repetition_penalty"] = None  # no penalty: batches with unpenalised requests
    do_sample = bool(_typed(params, "do_sample", bool, "a boolean"))
    warpers = [out[name] for name in ("top_p", "top_k", "typical_p")]
    warped = out["temperature"] not in (None, 1.0) or any(v is not None for v in warpers)
    return {"do_sample": do_sample or warped, **out}


def _stop(params: dict, limits: Limits) -> tuple[str, ...]:
    stop = params.get("stop")
    if stop is None:
        return ()
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("`stop` must be a list of non-empty strings.")
    if len(stop) > limits.max_stop_sequences:
        raise RequestError(f"`stop` must hold at most {limits.max_stop_sequences} sequences. Given: {len(stop)}.")
    return tuple(stop)


def _typed(params: dict, name: str, kind: type, what: str, where: str = "parameters.") -> Any:
    value = params.get(name)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise RequestError(f"`{where}{name}` must be {what}, not {type(value).__name__}.")
    return value
