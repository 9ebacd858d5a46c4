"""Reading a TGI request body: ``{"inputs": str, "parameters": {...}, "stream": bool}``, as pydantic models.

The parameters are TGI's (`huggingface_hub.TextGenerationInputGenerateParameters` names them); a
bad one is refused with TGI's error JSON (``{"error": ..., "error_type": "validation"}``, status
422) naming the field. As in TGI, fields the server does not know are ignored, parameters sent as
``null`` mean "the default" (`huggingface_hub.InferenceClient` sends every parameter it knows),
and ``parameters`` must be an object (``[]``, ``0`` or ``""`` are refused, not read as "none").
TGI parameters this server does not implement are refused when set to anything but their "off" value.

Example:
    >>> limits = Limits(max_input_tokens=512, max_new_tokens_limit=256)
    >>> request = parse_request({"inputs": "Hi", "parameters": {"adapter_id": "samsum", "top_k": 5}}, limits)
    >>> request.adapter_id, request.do_sample, request.top_k
    ('samsum', True, 5)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from peft_hybrid.modeling.mixed import BASE_ADAPTER

# Below this a sampling temperature overflows float32 logits (inf, then NaN probabilities).
MIN_TEMPERATURE = 1e-4
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]


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
    """One validated request. ``max_new_tokens=None`` takes the adapter's default.

    ``grammar`` is ``("regex", pattern)`` or ``("json", schema as JSON text)``; the route turns it
    into ``logits_processor``, a callable ``(generated_ids, scores[vocab]) -> scores`` for this row
    that the engine applies after the repetition penalty and before sampling (or argmax).
    """

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
    grammar: tuple[str, str] | None = None
    logits_processor: Callable[[list[int], Any], Any] | None = dataclasses.field(default=None, compare=False)

    def sampling_key(self) -> tuple:
        """Requests with equal keys decode with the same settings, so they can share one batch.

        A seeded sampled request runs in a batch of its own seed: the same seed gives the same text.
        """
        if not self.do_sample:
            return ("greedy", self.repetition_penalty)
        warp = (self.temperature, self.top_p, self.top_k, self.typical_p, self.repetition_penalty)
        return ("sample", *warp, self.seed)


class Grammar(BaseModel):
    """TGI's ``grammar``: ``{"type": "json", "value": schema}`` or ``{"type": "regex", "value": pattern}``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["json", "regex", "json_schema"]
    value: Any

    def spec(self, where: str) -> tuple[str, str]:
        """``("regex", pattern)`` or ``("json", schema text)``, or a `RequestError` naming ``where``."""
        value = self.value
        if self.type == "regex":
            if not isinstance(value, str) or not value:
                raise RequestError(f"`{where}.value` must be a non-empty regular expression string.")
            return ("regex", value)
        if self.type == "json_schema":  # TGI's {"name": ..., "schema": {...}}
            value = value.get("schema") if isinstance(value, dict) else None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise RequestError(f"`{where}.value` is not valid JSON ({err}).") from None
        if not isinstance(value, dict):
            raise RequestError(f"`{where}.value` must be a JSON schema object.")
        return ("json", json.dumps(value, sort_keys=True))


class Parameters(BaseModel):
    """TGI's ``parameters``; unknown names are ignored, as TGI ignores them."""

    model_config = ConfigDict(extra="ignore")
    adapter_id: Str | None = None
    max_new_tokens: Annotated[Int, Field(gt=0)] | None = None
    do_sample: Bool | None = None
    temperature: Annotated[Float, Field(ge=MIN_TEMPERATURE)] | None = None
    top_p: Annotated[Float, Field(gt=0, lt=1)] | None = None
    top_k: Annotated[Int, Field(gt=0)] | None = None
    typical_p: Annotated[Float, Field(gt=0, lt=1)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0)] | None = None
    seed: Annotated[Int, Field(ge=0, lt=2**64)] | None = None
    stop: list[Annotated[Str, Field(min_length=1)]] | None = None
    details: Bool | None = None
    truncate: Annotated[Int, Field(gt=0)] | None = None
    return_full_text: Bool | None = None
    grammar: Grammar | None = None
    # TGI parameters accepted only at their "off" value.
    best_of: Literal[1] | None = None
    decoder_input_details: Literal[False] | None = None
    watermark: Literal[False] | None = None
    frequency_penalty: Literal[0] | None = None
    top_n_tokens: Literal[0] | None = None
    adapter_parameters: None = None


class Body(BaseModel):
    """A TGI request body."""

    model_config = ConfigDict(extra="ignore")
    inputs: Str
    parameters: Parameters | None = None
    stream: Bool | None = None

    @field_validator("inputs")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("`inputs` cannot be empty")
        return value


_OFF = {
    *("best_of", "decoder_input_details", "watermark", "frequency_penalty", "top_n_tokens", "adapter_parameters"),
    *("presence_penalty", "echo", "logprobs", "suffix"),  # OpenAI's (`peft_hybrid.serve.openai_requests`)
}


def validation_message(err: ValidationError, prefix: str = "") -> str:
    """One sentence per pydantic error, each naming its field (``parameters.temperature``)."""
    parts = []
    for item in err.errors(include_url=False):
        loc = ".".join(str(p) for p in item["loc"] if not str(p).startswith(("function-", "constrained-")))
        field = item["loc"][-1] if item["loc"] else ""
        if field in _OFF and item["type"] != "missing":
            parts.append(f"`{field}` is not supported by this server; leave it unset.")
        elif item["type"] == "missing":
            parts.append(f"`{prefix}{loc}` is missing.")
        else:
            parts.append(f"`{prefix}{loc}`: {item['msg'].removeprefix('Value error, ')}.")
    return " ".join(parts)


def parse_request(body: Any, limits: Limits, *, stream: bool | None = None) -> GenerateRequest:
    """A `GenerateRequest` from a decoded JSON body, or a `RequestError` naming the bad field.

    ``stream``: the route decides (``/generate``: False, ``/generate_stream``: True); ``None``
    (TGI's compat route ``/``) reads the body's ``"stream"``.
    """
    if not isinstance(body, dict):
        raise RequestError('The request body must be a JSON object: {"inputs": "...", "parameters": {...}}.')
    try:
        parsed = Body.model_validate(body)
    except ValidationError as err:
        raise RequestError(validation_message(err)) from None
    if stream is None:
        stream = bool(parsed.stream)
    elif parsed.stream is not None and parsed.stream != stream:
        route = "/generate_stream" if parsed.stream else "/generate"
        raise RequestError(f"`stream` is {str(parsed.stream).lower()} on a route that does not; use {route}.")
    params = parsed.parameters or Parameters()
    check_limits(params.max_new_tokens, params.stop, params.truncate, limits)
    return GenerateRequest(
        inputs=parsed.inputs,
        adapter_id=params.adapter_id or BASE_ADAPTER,
        max_new_tokens=params.max_new_tokens,
        seed=params.seed,
        stop=tuple(params.stop or ()),
        details=bool(params.details),
        truncate=params.truncate,
        return_full_text=bool(params.return_full_text),
        stream=stream,
        grammar=params.grammar.spec("parameters.grammar") if params.grammar else None,
        **sampling(params),
    )


def check_limits(max_new: int | None, stop: list | None, truncate: int | None, limits: Limits) -> None:
    """The server's limits on one request (its ``--max-new-tokens-limit`` and so on)."""
    if max_new is not None and max_new > limits.max_new_tokens_limit:
        raise RequestError(
            f"`max_new_tokens` must be <= {limits.max_new_tokens_limit} (the server's limit). Given: {max_new}."
        )
    if stop and len(stop) > limits.max_stop_sequences:
        raise RequestError(f"`stop` must hold at most {limits.max_stop_sequences} sequences. Given: {len(stop)}.")
    if truncate is not None and truncate > limits.max_input_tokens:
        raise RequestError(f"`truncate` must be <= {limits.max_input_tokens} (--max-input-tokens). Given: {truncate}.")


def sampling(params: Parameters) -> dict[str, Any]:
    """The sampling settings; any warper set means sampling, as in TGI."""
    out = {name: getattr(params, name) for name in ("temperature", "top_p", "top_k", "typical_p")}
    out["repetition_penalty"] = None if params.repetition_penalty == 1.0 else params.repetition_penalty
    warped = out["temperature"] not in (None, 1.0) or any(out[n] is not None for n in ("top_p", "top_k", "typical_p"))
    return {"do_sample": bool(params.do_sample) or warped, **out}


def check_text(value: Any, where: str = "body") -> None:
    """Refuse a string that is not Unicode text (a lone surrogate, ``"\\ud800"``), naming where it is."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(
                f"`{where}` holds a lone surrogate (not valid Unicode text); send UTF-8 text."
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, where)
            check_text(item, f"{where}.{key}" if where != "body" else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_text(item, f"{where}[{i}]")
