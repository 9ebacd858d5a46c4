"""Tokenization, dynamic padding and length-grouped batching for seq2seq training.

Length grouping: we rely on the Trainer. `tokenize_dataset` adds a ``length`` column (source
tokens), and ``TrainingArguments(train_sampling_strategy="group_by_length",
length_column_name="length")`` (``group_by_length=True`` in transformers < 5) makes the Trainer
use its ``LengthGroupedSampler``: random mega-batches of 50 batches, sorted by length inside.
`padding_stats` simulates that same scheme to report how many pad tokens it saves.

Example:
    >>> stats = padding_stats([3, 5, 4, 10], batch_size=2, pad_to=16)
    >>> stats["real_tokens"], stats["fixed_tokens"]
    (22, 64)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")


def _lengths_and_truncate(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> tuple[list[list[int]], int, int]:
    """Token ids truncated to ``max_length``, how many were cut, and the longest full length."""
    ids = tokenizer(texts, truncation=False)["input_ids"]
    too_long = [i for i, seq in enumerate(ids) if len(seq) > max_length]
    if too_long:
        # Re-tokenize only the long ones so truncation keeps the tokenizer's special tokens.
        cut = tokenizer([texts[i] for i in too_long], truncation=True, max_length=max_length)
        for i, seq in zip(too_long, cut["input_ids"]):
            ids[i] = seq
    longest = max((len(s) for s in ids), default=0)
    return ids, len(too_long), longest


def tokenize_dataset(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_source_length: int,
    max_target_length: int,
    *,
    source_column: str = "input_text",
    target_column: str = "target",
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Tokenize sources and targets without padding; count (never hide) truncation.

    Args:
        dataset: rows with ``source_column`` (the formatted input, see
            `peft_hybrid.tasks.Task.format_dataset`) and ``target_column``.
        tokenizer: a seq2seq tokenizer (T5: appends ``</s>``).
        max_source_length / max_target_length: token limits; longer texts are truncated.

    Returns:
        ``(tokenized, stats)``: ``tokenized`` has ``input_ids``, ``attention_mask``, ``labels``
        and ``length`` (source tokens, for length-grouped sampling); ``stats`` has
        ``examples``, ``truncated_sources``, ``truncated_targets``, ``max_source_tokens`` and
        ``max_target_tokens`` (after truncation).
    """
    for column in (source_column, target_column):
        if column not in dataset.column_names:
            hint = " (call task.format_dataset(dataset, use_task_tags) first)" if (column == "input_text") else ""
            raise ValueError(f"the dataset has no column {column!r}{hint}; columns are {dataset.column_names}")
    sources, source_cut, source_max = _lengths_and_truncate(tokenizer, list(dataset[source_column]), max_source_length)
    targets, target_cut, target_max = _lengths_and_truncate(tokenizer, list(dataset[target_column]), max_target_length)
    tokenized = datasets.Dataset.from_dict(
        {
            "input_ids": sources,
            "attention_mask": [[1] * len(s) for s in sources],
            "labels": targets,
            "length": [len(s) for s in sources],
        }
    )
    stats = {
        "examples": len(sources),
        "truncated_sources": source_cut,
        "truncated_targets": target_cut,
        "max_source_tokens": source_max,
        "max_target_tokens": target_max,
    }
    return tokenized, stats


class Seq2SeqCollator:
    """Pads each batch to its own longest sequence; labels are padded with -100 (ignored by loss).

    Wraps transformers' ``DataCollatorForSeq2Seq`` and drops non-model columns such as
    ``length``. Pass ``model`` to also build ``decoder_input_ids`` from the labels.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: Any = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self._inner = DataCollatorForSeq2Seq(
            tokenizer,
            model=model,
            padding="longest",
            label_pad_token_id=-100,
            pad_to_multiple_of=pad_to_multiple_of,
            return_tensors="pt",
        )

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        kept = [{k: f[k] for k in MODEL_COLUMNS if k in f} for f in features]
        return self._inner(kept)


def length_grouped_order(
    lengths: Sequence[int], batch_size: int, *, mega_batch_mult: int = 50, seed: int = 0
) -> list[int]:
    """Example order of length-grouped sampling: shuffle, cut into mega-batches of
    ``mega_batch_mult * batch_size``, sort each by decreasing length."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    size = max(mega_batch_mult, 1) * batch_size
    grouped: list[int] = []
    for start in range(0, len(order), size):
        grouped.extend(sorted(order[start : start + size], key=lambda i: -lengths[i]))
    return grouped


def _padded_tokens(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> int:
    total = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        total += max(batch) * len(batch)
    return total


def padding_stats(
    lengths: Sequence[int],
    batch_size: int,
    *,
    pad_to: int = 512,
    mega_batch_mult: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Tokens processed per epoch under three batching schemes, for one sequence side.

    Args:
        lengths: token count of every example (after truncation).
        batch_size: examples per batch.
        pad_to: fixed length of the pad-everything scheme (the paper pads to 512).
        mega_batch_mult: mega-batch size in batches; default as the Trainer's sampler:
            ``min(len(lengths) // (4 * batch_size), 50)``, at least 1.
        seed: shuffling seed.

    Returns:
        ``real_tokens`` (no padding at all), ``fixed_tokens`` (every example padded to
        ``pad_to``), ``random_dynamic_tokens`` (shuffled batches padded to their maximum),
        ``grouped_dynamic_tokens`` (length-grouped batches padded to their maximum), and the
        pad fraction of each scheme (``*_pad_fraction``).
    """
    if not lengths:
        raise ValueError("lengths is empty; pass the token count of each example")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max(lengths) > pad_to:
        raise ValueError(f"an example has {max(lengths)} tokens, more than pad_to={pad_to}; truncate first")
    if mega_batch_mult is None:
        mega_batch_mult = max(min(len(lengths) // (4 * batch_size), 50), 1)
    shuffled = list(range(len(lengths)))
    random.Random(seed).shuffle(shuffled)
    grouped = length_grouped_order(lengths, batch_size, mega_batch_mult=mega_batch_mult, seed=seed)
    real = int(sum(lengths))
    stats: dict[str, float] = {
        "examples": len(lengths),
        "real_tokens": real,
        "fixed_tokens": pad_to * len(lengths),
        "random_dynamic_tokens": _padded_tokens(lengths, shuffled, batch_size),
        "grouped_dynamic_tokens": _padded_tokens(lengths, grouped, batch_size),
    }
    for scheme in ("fixed", "random_dynamic", "grouped_dynamic"):
        total = stats[f"{scheme}_tokens"]
        stats[f"{scheme}_pad_fraction"] = (total - real) / total
    return stats


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from ``seed + epoch`` rather than the global RNG.

    transformers' sampler draws from the global RNG when the epoch starts, and a run resumed in
    the middle of an epoch restores that RNG only after the epoch's order was drawn: the resumed
    run would see other batches than the uninterrupted one.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
