"""Loading a saved adapter for use, applying its saved inference settings, and batched generation.

An adapter folder records how its run formatted inputs and generated (`HybridConfig.inference`);
`model_inputs`, `source_length` and `generation_settings` are the one place that applies them, for
``peft-hybrid evaluate``/``predict``/``attribute`` and serving alike. An argument given explicitly
overrides the saved value; ``None`` means "not given".

One home for "which adapter, which tokenizer" shared by the recipes, ``peft-hybrid evaluate`` /
``predict`` and the attribution command; the base comes from the one resolver,
`peft_hybrid.modeling.loading` (a Hub id, a local folder, or an offline preset). Hub ids are
checked with `peft_hybrid.hub.access.require_hub` first, so an offline machine fails at once with
advice (an adapter already in the local Hub cache passes under ``HF_HUB_OFFLINE=1``).

Example:
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.inference import generate_texts, load_for_inference
    >>> from peft_hybrid.modeling.loading import load_base
    >>> base, tokenizer = load_base(preset="tiny")
    >>> model = HybridModel(base, HybridConfig(), tokenizer=tokenizer)
    >>> _ = model.save_pretrained("adapter")
    >>> texts = generate_texts(model.eval(), tokenizer, ["Amy: see you at 5?"], max_new_tokens=8, progress=False)
    >>> reloaded, tokenizer = load_for_inference("adapter")
    >>> generate_texts(reloaded, tokenizer, ["Amy: see you at 5?"], max_new_tokens=8, progress=False) == texts
    True
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from peft_hybrid.config import HybridConfig, InferenceSettings
from peft_hybrid.hub.access import require_hub
from peft_hybrid.hub.download import resolve_folder
from peft_hybrid.modeling.loading import load_base, load_base_model
from peft_hybrid.modeling.model import HybridModel
from peft_hybrid.modeling.serialization import AdapterLoadError, adapter_path_problem
from peft_hybrid.offline.presets import preset_id

_TOKENIZER_FILES = ("tokenizer_config.json", "spiece.model", "tokenizer.json")
_TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# For folders that record no settings (format 1, or saved outside a training run): the
# trainer's default input length, and a generation cap when no task names one.
DEFAULT_MAX_SOURCE_LENGTH = 512
DEFAULT_MAX_NEW_TOKENS = 64


def load_for_inference(
    adapter: str | Path,
    *,
    base: str | None = None,
    preset: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
    adapter_name: str = "default",
) -> tuple[HybridModel, Any]:
    """A saved adapter (folder or Hub id) on its base, in eval mode, with its tokenizer.

    Args:
        adapter: folder written by ``save_pretrained``/a training run, or a Hub repo id.
        base: base model id or folder overriding the one named in the adapter config.
        preset: offline preset base (``tiny`` ...) overriding both.
        revision: revision of ``adapter`` on the Hub.
        device: where to put the model (default: CUDA when available, else CPU).

    The tokenizer saved beside the adapter (training runs save it) wins over the base's.
    """
    if not Path(adapter).is_dir():
        problem = adapter_path_problem(adapter)
        if problem is not None:
            raise AdapterLoadError(problem)
        if _looks_like_path(str(adapter)):
            raise FileNotFoundError(
                f"adapter {str(adapter)!r}: no such folder. Pass the output_dir of a training run (or a folder "
                "written by save_pretrained), or a Hub repo id (owner/name)."
            )
        require_hub(f"adapter {str(adapter)!r}", str(adapter), revision=revision)
    folder = resolve_folder(adapter, revision=revision, token=token)
    config = HybridConfig.load(folder)
    # The tokenizer saved beside the adapter wins; the base's is fetched only when there is none.
    tokenizer = _saved_tokenizer(folder) if any((folder / name).is_file() for name in _TOKENIZER_FILES) else None
    if config.trains_base:
        model = HybridModel.from_pretrained(folder, adapter_name=adapter_name)
    else:
        name = preset_id(preset) if preset is not None else base or config.base_model_name_or_path
        revision = None if (base or preset) else config.revision
        if tokenizer is None:
            base_model, tokenizer = load_base(name, revision=revision, token=token)
        else:
            base_model = load_base_model(name, revision=revision, token=token)
        model = HybridModel.from_pretrained(
            folder, base_model=base_model, tokenizer=tokenizer, adapter_name=adapter_name
        )
    if tokenizer is None:
        raise ValueError(
            f"{folder} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the tokenizer beside the model."
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def _saved_tokenizer(folder: Path) -> Any:
    """The tokenizer saved beside an adapter; a damaged file is named (the library would not)."""
    from transformers import AutoTokenizer

    for name in _TOKENIZER_JSON:
        file = folder / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise AdapterLoadError(
                    f"{file} is damaged ({err}): the tokenizer saved beside the adapter cannot be read. Save the "
                    "adapter folder again, or copy the tokenizer files of its base model into it."
                ) from None
    return AutoTokenizer.from_pretrained(str(folder))


def _looks_like_path(name: str) -> bool:
    """True for strings that cannot be Hub repo ids (``name`` or ``owner/name``) but are paths."""
    path = Path(name)
    return path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or path.exists()


@torch.inference_mode()
def generate_texts(
    model: HybridModel,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_source_length: int = 512,
    progress: bool = True,
    desc: str = "generating",
    adapter_names: Sequence[str] | None = None,
    fast: bool = False,
    **generation_kwargs: Any,
) -> list[str]:
    """Generate one output per input text, in input order, ``batch_size`` texts at a time.

    Batches are taken in input order (as the Trainer's evaluation does), so the same adapter
    gives the same outputs here and in ``HybridTrainer.evaluate``. LoRA is merged for the whole
    call (`peft_hybrid.speed.merged_lora`, as the Trainer's ``merged_eval``): plain Linears,
    the same tokens, the model put back unchanged afterwards. The progress bar goes to stderr,
    leaving stdout for the outputs. ``adapter_names`` (one per text) runs each text with its own
    adapter in mixed batches; `HybridModel.generate` then merges LoRA for a batch whose rows all
    name one adapter, and runs LoRA per row otherwise.
    ``fast=True`` also decodes with `peft_hybrid.speed.fast_generation` (static KV cache, compiled
    steps; the same tokens in fp32, after a one-off compile).
    """
    from tqdm.auto import tqdm

    from peft_hybrid.speed import fast_generation, merged_lora

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: pass a positive number of texts per batch.")
    outputs: list[str] = []
    bar = tqdm(total=len(texts), desc=desc, unit="ex", file=sys.stderr, disable=not progress)
    if adapter_names is not None and len(adapter_names) != len(texts):
        raise ValueError(f"adapter_names has {len(adapter_names)} names for {len(texts)} texts; pass one per text.")
    decoding = fast_generation(model) if fast else contextlib.nullcontext()
    merging = merged_lora(model) if adapter_names is None else contextlib.nullcontext()
    with merging, decoding:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            encoded = tokenizer(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=max_source_length
            )
            encoded = {k: v.to(model.device) for k, v in encoded.items()}
            if adapter_names is not None:
                generation_kwargs["adapter_names"] = list(adapter_names[start : start + batch_size])
            generated = model.generate(**encoded, **generation_kwargs)
            decoded = tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            outputs.extend(text.strip() for text in decoded)
            bar.update(len(batch))
    bar.close()
    return outputs


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


def evaluate_rows(
    model: HybridModel,
    tokenizer: Any,
    task: Any,
    rows: Any,
    *,
    batch_size: int = 16,
    max_source_length: int | None = None,
    use_task_tags: bool | None = None,
    task_prefix: str | None = None,
    progress: bool = True,
    fast: bool = False,
    **generation_overrides: Any,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Generate for task ``rows`` as the adapter's run evaluated (its saved settings) and score them.

    ``max_source_length``, ``use_task_tags``, ``task_prefix`` and ``generation_overrides`` given
    (not ``None``) override the saved settings (see `model_inputs`, `generation_settings`).

    Returns ``(metrics, predictions)``: the task's metrics and one ``{"source", "reference",
    "prediction"}`` row per example, in order.
    """
    from peft_hybrid.training.callbacks import decoded_rows

    rows = list(rows)
    config = model.hybrid_config
    texts = model_inputs(config, rows, task=task, task_prefix=task_prefix, use_task_tags=use_task_tags)
    predictions = generate_texts(
        model,
        tokenizer,
        texts,
        batch_size=batch_size,
        max_source_length=source_length(config, max_source_length),
        progress=progress,
        desc=f"{task.name}: generating",
        fast=fast,
        **generation_settings(config, task, **generation_overrides),
    )
    metrics = task.compute_metrics(predictions, rows)
    return metrics, decoded_rows([r["source"] for r in rows], [r["target"] for r in rows], predictions)
