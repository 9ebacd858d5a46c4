"""What the server sends into the model and what it sends back: the one home for request formatting.

The adapter's task formats a request's input exactly as training and ``peft-hybrid predict`` do
(`peft_hybrid.inference.input_texts`), and outputs are decoded as `peft_hybrid.inference.generate_texts`
decodes them, so the server answers what offline generation answers. A request without an adapter
(``__base__``) reaches the base as sent.

Example:
    >>> from peft_hybrid import HybridConfig
    >>> format_request(HybridConfig(task="sst2"), "a gorgeous, witty film")
    'a gorgeous, witty film'
    >>> format_request(None, "plain text")
    'plain text'
    >>> generation_defaults(HybridConfig(task="sst2"))
    {'max_new_tokens': 3}
"""

from __future__ import annotations

from typing import Any

from peft_hybrid.config import HybridConfig

# peft-hybrid predict's cap for an adapter without a task; the server uses the same.
DEFAULT_MAX_NEW_TOKENS = 64


def format_request(adapter_config: HybridConfig | None, text: str) -> str:
    """The model input for ``text`` sent to the adapter with ``adapter_config`` (``None``: the bare base)."""
    task = _task(adapter_config)
    if task is None:
        return text
    from peft_hybrid.inference import input_texts

    return input_texts(task, [{"source": text}], adapter_config.mode)[0]


def generation_defaults(adapter_config: HybridConfig | None) -> dict[str, Any]:
    """Generation settings a request leaves unset: the adapter task's, as ``peft-hybrid predict`` uses them.

    The server decodes greedily or samples, one sequence per request; a task asking for beam
    search is refused here rather than served differently from offline prediction.
    """
    task = _task(adapter_config)
    settings = dict(task.generation_kwargs) if task is not None else {}
    beams = settings.pop("num_beams", 1)
    if beams != 1:
        raise ValueError(
            f"task {task.name!r} generates with num_beams={beams}; the server decodes one sequence per request "
            "(greedy or sampled). Serve an adapter whose task uses num_beams=1."
        )
    unknown = sorted(set(settings) - {"max_new_tokens"})
    if unknown:
        raise ValueError(f"task {task.name!r} sets generation settings the server does not apply: {unknown}.")
    return {"max_new_tokens": settings.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)}


def decode_output(tokenizer: Any, token_ids: list[int]) -> str:
    """The text of generated ``token_ids``, decoded exactly as offline generation decodes it."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return text.strip()


def _task(adapter_config: HybridConfig | None):
    if adapter_config is None or not adapter_config.task:
        return None
    from peft_hybrid.tasks import get_task

    return get_task(adapter_config.task)
