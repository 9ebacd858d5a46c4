"""Batched generation for texts and task rows, as the Trainer's evaluation generates."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import torch

from peft_hybrid.inference.decoding import decode_texts, decoded_rows
from peft_hybrid.inference.settings import generation_settings, model_inputs, source_length
from peft_hybrid.modeling.model import HybridModel


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
    call (`peft_hybrid.inference.merged_lora`, as the Trainer's ``merged_eval``): plain Linears,
    the same tokens, the model put back unchanged afterwards. The progress bar goes to stderr,
    leaving stdout for the outputs. ``adapter_names`` (one per text) runs each text with its own
    adapter in mixed batches; `HybridModel.generate` then merges LoRA for a batch whose rows all
    name one adapter, and runs LoRA per row otherwise.
    ``fast=True`` also decodes with `peft_hybrid.inference.fast_generation` (static KV cache, compiled
    steps; the same tokens in fp32, after a one-off compile).
    """
    from tqdm.auto import tqdm

    from peft_hybrid.inference.fast import fast_generation
    from peft_hybrid.inference.merged import merged_lora

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
            outputs.extend(decode_texts(tokenizer, generated))
            bar.update(len(batch))
    bar.close()
    return outputs


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
