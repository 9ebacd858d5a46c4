"""What the server sends into the model and what it sends back: the one home for request formatting.

A request's input is formatted with the adapter's saved inference settings (task, prefix, task
tags, max source length; `peft_hybrid.inference.model_inputs` and `source_length`), its defaults
are the adapter's saved generation settings (`peft_hybrid.inference.generation_settings`), and
outputs are decoded as `peft_hybrid.inference.generate_texts` decodes them: the server answers
what ``peft-hybrid predict`` answers. A request without an adapter (``__base__``) reaches the base
as sent.

Example:
    >>> from peft_hybrid import HybridConfig
    >>> from peft_hybrid.config import InferenceSettings
    >>> format_request(HybridConfig(task="sst2"), "a gorgeous, witty film")
    'a gorgeous, witty film'
    >>> format_request(HybridConfig(task="sst2", inference=InferenceSettings(task_prefix="review: ")), "witty")
    'review: witty'
    >>> format_request(None, "plain text")
    'plain text'
    >>> generation_defaults(HybridConfig(task="sst2"))
    {'max_new_tokens': 3}
"""

from __future__ import annotations

from typing import Any

from peft_hybrid.config import HybridConfig
from peft_hybrid.inference import DEFAULT_MAX_SOURCE_LENGTH, generation_settings, model_inputs, source_length
from peft_hybrid.inference.decoding import decode_texts


def format_request(adapter_config: HybridConfig | None, text: str) -> str:
    """The model input for ``text`` sent to the adapter with ``adapter_config`` (``None``: the bare base)."""
    if adapter_config is None:
        return text
    return model_inputs(adapter_config, [text])[0]


def max_source_tokens(adapter_config: HybridConfig | None) -> int:
    """The input tokens offline prediction keeps for this adapter (the rest is truncated there too)."""
    return DEFAULT_MAX_SOURCE_LENGTH if adapter_config is None else source_length(adapter_config)


def generation_defaults(adapter_config: HybridConfig | None) -> dict[str, Any]:
    """Generation settings a request leaves unset: the adapter's, as ``peft-hybrid predict`` uses them.

    The server decodes greedily or samples, one sequence per request; an adapter that generates
    with beam search is refused here rather than served differently from offline prediction.
    """
    settings = generation_settings(adapter_config or HybridConfig(mode="none"))
    beams = settings.pop("num_beams", 1)
    if beams != 1:
        raise ValueError(
            f"this adapter generates with num_beams={beams}; the server decodes one sequence per request "
            "(greedy or sampled). Serve an adapter that generates with num_beams=1."
        )
    unknown = sorted(set(settings) - {"max_new_tokens"})
    if unknown:
        raise ValueError(f"this adapter sets generation settings the server does not apply: {unknown}.")
    return {"max_new_tokens": settings["max_new_tokens"]}


def decode_output(tokenizer: Any, token_ids: list[int]) -> str:
    """The text of generated ``token_ids``, decoded exactly as offline generation decodes it."""
    return decode_texts(tokenizer, [token_ids])[0]
