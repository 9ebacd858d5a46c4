"""Loading a base model or a saved adapter for use, and batched generation with a progress bar.

One home for "which base, which tokenizer" shared by the recipes, ``peft-hybrid evaluate`` /
``predict`` and the attribution command: a base is a Hub id, a local folder, or an offline
preset (``preset:tiny`` in an adapter config names `peft_hybrid.offline.t5_from_preset`'s model,
always built with seed 0 so the same random base comes back). Hub ids are checked with
`peft_hybrid.hub.access.require_hub` first, so an offline machine fails at once with advice.

Example:
    >>> from peft_hybrid.inference import generate_texts
    >>> from peft_hybrid.modeling.loading import load_base
    >>> base, tokenizer = load_base(preset="tiny")
    >>> model = HybridModel(base, HybridConfig(), tokenizer=tokenizer)  # doctest: +SKIP
    >>> model.save_pretrained("adapter")  # doctest: +SKIP
    >>> model, tokenizer = load_for_inference("adapter")  # doctest: +SKIP
    >>> generate_texts(model, tokenizer, ["Amy: see you at 5?"], max_new_tokens=8)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from peft_hybrid.config import HybridConfig
from peft_hybrid.hub.access import require_hub
from peft_hybrid.hub.download import resolve_folder
from peft_hybrid.modeling.loading import load_base
from peft_hybrid.modeling.model import HybridModel

_TOKENIZER_FILES = ("tokenizer_config.json", "spiece.model", "tokenizer.json")


def load_for_inference(
    adapter: str | Path,
    *,
    base: str | None = None,
    preset: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
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
        if _looks_like_path(str(adapter)):
            raise FileNotFoundError(
                f"adapter {str(adapter)!r}: no such folder. Pass the output_dir of a training run (or a folder "
                "written by save_pretrained), or a Hub repo id (owner/name)."
            )
        require_hub(f"adapter {str(adapter)!r}", str(adapter), revision=revision)
    folder = resolve_folder(adapter, revision=revision, token=token)
    config = HybridConfig.load(folder)
    if config.trains_base:
        model = HybridModel.from_pretrained(folder)
        tokenizer = None
    else:
        base_model, tokenizer = load_base(
            base or config.base_model_name_or_path,
            revision=None if base else config.revision,
            preset=preset,
            token=token,
        )
        model = HybridModel.from_pretrained(folder, base_model=base_model, tokenizer=tokenizer)
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer is None:
        raise ValueError(
            f"{folder} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the tokenizer beside the model."
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


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
    fast: bool = False,
    **generation_kwargs: Any,
) -> list[str]:
    """Generate one output per input text, in input order, ``batch_size`` texts at a time.

    Batches are taken in input order (as the Trainer's evaluation does), so the same adapter
    gives the same outputs here and in ``HybridTrainer.evaluate``. LoRA is merged for the whole
    call (`peft_hybrid.speed.merged_lora`, as the Trainer's ``merged_eval``): plain Linears,
    the same tokens, the model put back unchanged afterwards. ``fast=True`` also decodes with
    `peft_hybrid.speed.fast_generation` (static KV cache, compiled steps; the same
    tokens in fp32, after a one-off compile). The progress bar goes to stderr, leaving stdout for
    the outputs.
    """
    import contextlib

    from tqdm.auto import tqdm

    from peft_hybrid import speed_generation
    from peft_hybrid.speed import merged_lora

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: pass a positive number of texts per batch.")
    outputs: list[str] = []
    bar = tqdm(total=len(texts), desc=desc, unit="ex", file=sys.stderr, disable=not progress)
    decoding = speed_generation.fast_generation(model) if fast else contextlib.nullcontext()
    with merged_lora(model), decoding:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            encoded = tokenizer(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=max_source_length
            )
            encoded = {k: v.to(model.device) for k, v in encoded.items()}
            generated = model.generate(**encoded, **generation_kwargs)
            decoded = tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            outputs.extend(text.strip() for text in decoded)
            bar.update(len(batch))
    bar.close()
    return outputs


def input_texts(
    task: Any, rows: Any, mode: str, *, use_task_tags: bool | None = None, task_prefix: str | None = None
) -> list[str]:
    """The model inputs of task ``rows``: the task tag only for mode ``full`` unless told otherwise.

    The same rule as training (`peft_hybrid.training.recipe`), so an adapter is evaluated on what it saw.
    """
    tags = (mode == "full") if use_task_tags is None else use_task_tags
    return [task.format_input(row, tags, task_prefix) for row in rows]


def evaluate_rows(
    model: HybridModel,
    tokenizer: Any,
    task: Any,
    rows: Any,
    *,
    batch_size: int = 16,
    max_source_length: int = 512,
    use_task_tags: bool | None = None,
    task_prefix: str | None = None,
    progress: bool = True,
    fast: bool = False,
    **generation_overrides: Any,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Generate for task ``rows`` with the task's generation settings and score them.

    Returns ``(metrics, predictions)``: the task's metrics and one ``{"source", "reference",
    "prediction"}`` row per example, in order.
    """
    from peft_hybrid.training.callbacks import decoded_rows

    rows = list(rows)
    texts = input_texts(task, rows, model.hybrid_config.mode, use_task_tags=use_task_tags, task_prefix=task_prefix)
    generation = {**task.generation_kwargs, **{k: v for k, v in generation_overrides.items() if v is not None}}
    predictions = generate_texts(
        model,
        tokenizer,
        texts,
        batch_size=batch_size,
        max_source_length=max_source_length,
        progress=progress,
        desc=f"{task.name}: generating",
        fast=fast,
        **generation,
    )
    metrics = task.compute_metrics(predictions, rows)
    return metrics, decoded_rows([r["source"] for r in rows], [r["target"] for r in rows], predictions)
