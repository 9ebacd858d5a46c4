"""The saved inference settings of an adapter, applied: input formatting, source length, ``generate`` arguments.

An argument given explicitly overrides the saved value; ``None`` means "not given".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from peft_hybrid.config import HybridConfig, InferenceSettings

# For folders that record no settings (format 1, or saved outside a training run): the
# trainer's default input length, and a generation cap when no task names one.
DEFAULT_MAX_SOURCE_LENGTH = 512
DEFAULT_MAX_NEW_TOKENS = 64


def _task(task: Any) -> Any:
    from peft_hybrid.tasks import get_task

    return get_task(task) if isinstance(task, str) else task


def model_inputs(
    config: HybridConfig,
    rows: Iterable[Mapping[str, Any] | str],
    *,
    task: Any = None,
    task_prefix: str | None = None,
    use_task_tags: bool | None = None,
) -> list[str]:
    """The encoder input texts of ``rows`` (task rows with ``source``, or plain strings), as the run saw them.

    The saved prefix and task-tag choice apply unless ``task_prefix`` or ``use_task_tags`` is given
    (either replaces both); without a saved choice the mode's default holds
    (`HybridConfig.uses_task_tags`). ``task`` (a `Task` or its name) defaults to ``config.task``.

    Example:
        >>> config = HybridConfig(task="sst2", inference=InferenceSettings(task_prefix="review: "))
        >>> model_inputs(config, ["a gorgeous film"])
        ['review: a gorgeous film']
        >>> model_inputs(config, ["a gorgeous film"], use_task_tags=True)
        ['sst2 sentence: a gorgeous film']
    """
    saved = config.inference or InferenceSettings()
    if task_prefix is None and use_task_tags is None:
        task_prefix, use_task_tags = saved.task_prefix, saved.use_task_tags
    tags = config.uses_task_tags if use_task_tags is None else use_task_tags
    task = _task(task if task is not None else config.task)
    texts = []
    for row in rows:
        example = {"source": row} if isinstance(row, str) else row
        if task is not None:
            texts.append(task.format_input(example, tags, task_prefix))
        else:  # no task, so no tag to add
            texts.append((task_prefix or "") + example["source"])
    return texts


def source_length(config: HybridConfig, given: int | None = None) -> int:
    """Input tokens to keep: ``given``, else the saved ``max_source_length``, else 512.

    Example:
        >>> source_length(HybridConfig(inference=InferenceSettings(max_source_length=64)))
        64
    """
    if given is not None:
        return given
    saved = config.inference.max_source_length if config.inference is not None else None
    return saved if saved is not None else DEFAULT_MAX_SOURCE_LENGTH


def generation_settings(config: HybridConfig, task: Any = None, **overrides: Any) -> dict[str, Any]:
    """``generate`` arguments: the run's saved ones, then explicit ``overrides`` (``None`` = not given).

    Without saved settings, or for a ``task`` other than the adapter's, the task's own settings
    apply; a given ``max_new_tokens`` or ``max_length`` replaces both caps.

    Example:
        >>> saved = InferenceSettings(generation={"max_new_tokens": 3, "num_beams": 1})
        >>> generation_settings(HybridConfig(task="sst2", inference=saved), num_beams=4, max_new_tokens=None)
        {'max_new_tokens': 3, 'num_beams': 4}
    """
    named = _task(task)
    saved = config.inference.generation if config.inference is not None else {}
    if saved and (named is None or named.name == config.task):
        settings = dict(saved)
    else:
        fallback = named if named is not None else _task(config.task)
        settings = dict(fallback.generation_kwargs) if fallback is not None else {}
    given = {key: value for key, value in overrides.items() if value is not None}
    if "max_new_tokens" in given or "max_length" in given:  # one cap, the caller's
        settings.pop("max_new_tokens", None)
        settings.pop("max_length", None)
    settings.update(given)
    if "max_new_tokens" not in settings and "max_length" not in settings:
        settings["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
    return settings
