"""OpenAI's request bodies (``/v1/completions``, ``/v1/chat/completions``) read into `GenerateRequest` s.

Conventions are vLLM's, so its users' code works unchanged: ``model`` names an adapter (or the
base: its ``--base`` id, or ``tgi`` as `huggingface_hub.InferenceClient` sends); ``temperature: 0``
is greedy; unset ``temperature`` keeps the adapter's own decoding (greedy, as offline prediction);
``n`` choices of one prompt use seeds ``seed, seed + 1, ...``; ``top_k`` and
``repetition_penalty`` are accepted as vLLM accepts them. Unknown fields are ignored; OpenAI
fields the server cannot honour (``logprobs``, ``echo``, ``best_of`` > 1, penalties, ``tools``,
``logit_bias``, ``suffix``) are refused when set, never silently dropped.

A chat is mapped to one task input: T5 adapters have no chat template, so ``messages`` must be a
single ``user`` message (text, or text parts), which the adapter formats exactly as ``/generate``
formats ``inputs``. System prompts and earlier turns are refused with a 400 saying so.

``response_format``: ``{"type": "json_object"}`` (any JSON object), ``{"type": "json_schema",
"json_schema": {"schema": ...}}``, or TGI's ``{"type": "json" | "regex", "value": ...}``.

Example:
    >>> body = ChatBody.model_validate({"model": "sst2", "messages": [{"role": "user", "content": "great"}]})
    >>> body.user_text()
    'great'
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peft_hybrid.serve.requests import (
    MIN_TEMPERATURE,
    Bool,
    Float,
    GenerateRequest,
    Grammar,
    Int,
    Limits,
    RequestError,
    Str,
    check_limits,
    validation_message,
)

MAX_CHOICES = 16


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema", "json", "regex"]
    json_schema: dict[str, Any] | None = None
    value: Any = None

    def spec(self) -> tuple[str, str] | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ("json", json.dumps({"type": "object"}))
        if self.type == "json_schema":  # OpenAI: {"json_schema": {"schema"}}; TGI: {"value": {"schema"}}
            holder = self.json_schema if self.json_schema is not None else self.value
            schema = holder.get("schema") if isinstance(holder, dict) else None
            if not isinstance(schema, dict):
                raise RequestError("`response_format.json_schema.schema` must be a JSON schema object.")
            return ("json", json.dumps(schema, sort_keys=True))
        return Grammar(type=self.type, value=self.value).spec("response_format")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: Bool | None = None


class _Common(BaseModel):
    """Fields both OpenAI routes share."""

    model_config = ConfigDict(extra="ignore")
    model: Str | None = None
    max_tokens: Annotated[Int, Field(gt=0)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[Int, Field(ge=-1)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0)] | None = None
    n: Annotated[Int, Field(ge=1, le=MAX_CHOICES)] | None = None
    stop: Annotated[Str, Field(min_length=1)] | list[Annotated[Str, Field(min_length=1)]] | None = None
    seed: Annotated[Int, Field(ge=0, lt=2**64)] | None = None
    stream: Bool | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # OpenAI fields accepted only at their "off" value.
    best_of: Literal[1] | None = None
    presence_penalty: Literal[0] | None = None
    frequency_penalty: Literal[0] | None = None
    logit_bias: dict[str, Any] | None = None
    user: Str | None = None

    def generate_requests(self, text: str, adapter_id: str, limits: Limits) -> list[GenerateRequest]:
        """One `GenerateRequest` per choice (``n``) of ``text``."""
        if self.logit_bias:
            raise RequestError("`logit_bias` is not supported by this server; leave it unset.")
        if self.temperature is not None and 0 < self.temperature < MIN_TEMPERATURE:
            raise RequestError(f"`temperature` must be 0 (greedy) or at least {MIN_TEMPERATURE}.")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        max_tokens = self.max_new_tokens()
        check_limits(max_tokens, stop, None, limits)
        greedy = self.temperature == 0
        top_p = None if self.top_p in (None, 1.0) else self.top_p
        top_k = None if self.top_k in (None, -1, 0) else self.top_k
        sample = not greedy and (self.temperature is not None or top_p is not None or top_k is not None)
        base = GenerateRequest(
            inputs=text,
            adapter_id=adapter_id,
            max_new_tokens=max_tokens,
            do_sample=sample,
            temperature=self.temperature if sample and self.temperature not in (None, 1.0) else None,
            top_p=top_p if sample else None,
            top_k=top_k if sample else None,
            repetition_penalty=None if self.repetition_penalty in (None, 1.0) else self.repetition_penalty,
            stop=tuple(stop),
            stream=bool(self.stream),
            details=bool(self.stream),  # a stream reads each token's text
            grammar=self.response_format.spec() if self.response_format else None,
        )
        choices = []
        for j in range(self.n or 1):
            seed = None if self.seed is None or not sample else (self.seed + j) % 2**64
            choices.append(dataclasses.replace(base, seed=seed))
        return choices

    def max_new_tokens(self) -> int | None:
        return self.max_tokens


class CompletionBody(_Common):
    prompt: Str | list[Str]
    echo: Literal[False] | None = None
    logprobs: Literal[0] | None = None
    suffix: None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise RequestError("`prompt` must be a string or a non-empty list of strings.")
        for i, prompt in enumerate(prompts):
            if not prompt.strip():
                raise RequestError(
                    f"`prompt[{i}]` cannot be empty." if len(prompts) > 1 else "`prompt` cannot be empty."
                )
        return prompts


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Str
    content: Str | list[dict[str, Any]] | None = None


class ChatBody(_Common):
    messages: list[Message]
    max_completion_tokens: Annotated[Int, Field(gt=0)] | None = None
    logprobs: Literal[False] | None = None
    tools: list[Any] | None = None

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def user_text(self) -> str:
        """The single user message's text: what the adapter formats as its task input."""
        if self.tools:
            raise RequestError("`tools` are not supported: the adapters are task models, not chat models.")
        if len(self.messages) != 1 or self.messages[0].role != "user":
            roles = [m.role for m in self.messages]
            raise RequestError(
                f"`messages` must be exactly one message with role 'user' (given roles {roles}): the adapters "
                "are T5 task models without a chat template, so system prompts and earlier turns have no input "
                "to map to. Send the text to the task as one user message."
            )
        content = self.messages[0].content
        if isinstance(content, list):
            if not all(part.get("type") == "text" and isinstance(part.get("text"), str) for part in content):
                raise RequestError("`messages[0].content` parts must all be {'type': 'text', 'text': ...}.")
            content = "".join(part["text"] for part in content)
        if not content or not content.strip():
            raise RequestError("`messages[0].content` cannot be empty.")
        return content


def parse(model: type[BaseModel], body: Any) -> Any:
    """``body`` read as ``model``, or a 400 naming the bad field."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise RequestError(validation_message(err)) from None
