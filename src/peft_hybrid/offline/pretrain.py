"""T5-style span-corruption pre-training, so that a randomly initialised model knows some language.

Adapters only mean something on a base that has learned the text it will be adapted on: the
offline demo and the benchmarks cannot download FLAN-T5, so they pre-train a small T5 here on
text they have (synthetic dialogues, or the benchmarks' own unlabelled sentences).

The objective is T5's: about ``noise_density`` of the tokens of each packed chunk are dropped in
spans of mean length ``mean_span_length``; each span is replaced by one sentinel
(``<extra_id_0>``, ``<extra_id_1>``, ...) in the input, and the target lists each sentinel
followed by the tokens it replaced.

Example:
    >>> from peft_hybrid.offline import t5_from_preset
    >>> from peft_hybrid.offline.pretrain import pretrain_span_corruption
    >>> model, tokenizer = t5_from_preset("tiny")
    >>> texts = ["Amy: Are you free tomorrow?", "Ben: Yes, see you at noon."] * 50
    >>> result = pretrain_span_corruption(model, tokenizer, texts, steps=5, progress=False)
    >>> result.steps
    5
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

MAX_SENTINELS = 100


@dataclass
class PretrainResult:
    """What a pre-training run did.

    Attributes:
        steps: optimizer steps taken.
        seconds: wall time of the loop.
        chunks: packed chunks available (the size of the corpus in chunks).
        tokens_seen: input tokens fed to the encoder (after corruption, without padding).
        losses: training loss of every step.
    """

    steps: int
    seconds: float
    chunks: int
    tokens_seen: int
    losses: list[float] = field(default_factory=list)

    @property
    def first_loss(self) -> float:
        return _mean(self.losses[:20])

    @property
    def final_loss(self) -> float:
        """Mean loss of the last 20 steps (one step alone is noisy)."""
        return _mean(self.losses[-20:])

    def to_dict(self) -> dict[str, float | int]:
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "chunks": self.chunks,
            "tokens_seen": self.tokens_seen,
            "first_loss": round(self.first_loss, 4),
            "final_loss": round(self.final_loss, 4),
        }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def sentinel_ids(tokenizer, count: int = MAX_SENTINELS) -> list[int]:
    """Ids of ``<extra_id_0>`` ... ``<extra_id_{count-1}>``; ValueError if the tokenizer lacks them."""
    ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{k}>" for k in range(count)])
    if tokenizer.unk_token_id in ids or None in ids:
        raise ValueError(
            f"tokenizer has no sentinel tokens <extra_id_0>..<extra_id_{count - 1}>; span corruption needs a "
            "T5 tokenizer built with extra_ids=100 (as peft_hybrid.offline.offline_tokenizer() is)."
        )
    return list(ids)


def _random_segments(total: int, parts: int, rng: random.Random) -> list[int]:
    """Split ``total`` items into ``parts`` non-empty runs of random lengths."""
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def corrupt_spans(
    tokens: Sequence[int],
    sentinels: Sequence[int],
    eos_id: int,
    rng: random.Random,
    *,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> tuple[list[int], list[int]]:
    """One chunk's ``(input_ids, labels)`` under span corruption; both end with ``eos_id``.

    >>> corrupt_spans([10, 11, 12, 13, 14, 15, 16, 17], [99, 98], 1, random.Random(0), noise_density=0.25)
    ([10, 11, 12, 13, 14, 15, 99, 1], [99, 16, 17, 1])
    """
    n = len(tokens)
    if n < 2:
        raise ValueError(f"a chunk needs at least 2 tokens to corrupt, got {n}")
    noise = min(max(round(n * noise_density), 1), n - 1)
    spans = min(max(round(noise / mean_span_length), 1), noise, n - noise, len(sentinels))
    noise_lengths = _random_segments(noise, spans, rng)
    keep_lengths = _random_segments(n - noise, spans, rng)
    inputs: list[int] = []
    labels: list[int] = []
    position = 0
    for k, (keep, drop) in enumerate(zip(keep_lengths, noise_lengths)):
        inputs.extend(tokens[position : position + keep])
        position += keep
        inputs.append(sentinels[k])
        labels.append(sentinels[k])
        labels.extend(tokens[position : position + drop])
        position += drop
    # Each sample starts with kept text, so the corrupted spans never open a chunk; the cut
    # points are random, so every position is still dropped across epochs.
    return inputs + [eos_id], labels + [eos_id]


def pack_texts(tokenizer, texts: Sequence[str], chunk_length: int) -> list[list[int]]:
    """Tokenize ``texts``, join them with ``</s>`` between documents and cut into equal chunks."""
    if chunk_length < 4:
        raise ValueError(f"chunk_length={chunk_length} is too short; use 32 or more tokens")
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    chunks = [stream[i : i + chunk_length] for i in range(0, len(stream) - chunk_length + 1, chunk_length)]
    if not chunks:
        raise ValueError(
            f"texts hold {len(stream)} tokens, fewer than one chunk of {chunk_length}; pass more text or a "
            "smaller chunk_length"
        )
    return chunks


def _batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(i) for i, _ in pairs)
    label_width = max(len(target) for _, target in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), label_width), -100, dtype=torch.long)
    for row, (inputs, targets) in enumerate(pairs):
        input_ids[row, : len(inputs)] = torch.tensor(inputs)
        attention_mask[row, : len(inputs)] = 1
        labels[row, : len(targets)] = torch.tensor(targets)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pretrain_span_corruption(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    steps: int | None = None,
    seconds: float | None = None,
    batch_size: int = 32,
    chunk_length: int = 64,
    learning_rate: float = 3e-3,
    warmup_steps: int = 50,
    weight_decay: float = 0.0,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    seed: int = 0,
    progress: bool = True,
) -> PretrainResult:
    """Pre-train every weight of a T5-family ``model`` in place with span corruption.

    Args:
        model: a ``T5ForConditionalGeneration`` (or mT5/umT5); all its weights train.
        tokenizer: its tokenizer, with ``<extra_id_*>`` sentinels.
        texts: unlabelled documents; packed into chunks of ``chunk_length`` tokens.
        steps / seconds: the budget; give one (or both: whichever ends first). ``steps`` alone
            is deterministic for a given ``seed``; ``seconds`` depends on the machine's speed.
        batch_size, learning_rate, warmup_steps, weight_decay: AdamW with linear warm-up, then a
            cosine decay to 10% over the budget (by step, or by elapsed time with ``seconds``).
        noise_density, mean_span_length: T5's corruption settings (0.15 and 3).
        seed: seeds chunk order, corruption and dropout.
        progress: show a tqdm bar with the running loss.

    Returns:
        A `PretrainResult`; the model is left in eval mode.
    """
    _check_budget(steps, seconds)
    from tqdm.auto import tqdm

    sentinels = sentinel_ids(tokenizer)
    chunks = pack_texts(tokenizer, texts, chunk_length)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    model.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    result = PretrainResult(steps=0, seconds=0.0, chunks=len(chunks), tokens_seen=0)
    bar = tqdm(
        total=steps if steps is not None else round(seconds),
        unit="step" if steps is not None else "s",
        desc="span-corruption pre-training",
        disable=not progress,
    )
    order: list[int] = []
    start = time.perf_counter()
    try:
        while True:
            elapsed = time.perf_counter() - start
            done = max(result.steps / steps if steps else 0.0, elapsed / seconds if seconds else 0.0)
            if done >= 1.0:
                break
            _set_learning_rate(optimizer, learning_rate, result.steps, warmup_steps, done)
            batch = _corrupted_batch(
                chunks, order, rng, tokenizer, sentinels, batch_size, noise_density, mean_span_length
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            result.tokens_seen += int(batch["attention_mask"].sum())
            result.losses.append(loss.detach().item())
            bar.update(1 if steps is not None else round(time.perf_counter() - start) - bar.n)
            bar.set_postfix(loss=f"{result.final_loss:.3f}")
    finally:
        bar.close()
        model.eval()
    result.seconds = time.perf_counter() - start
    return result


def _check_budget(steps: int | None, seconds: float | None) -> None:
    if steps is None and seconds is None:
        raise ValueError("pass steps=... or seconds=... to bound pre-training")
    if (steps is not None and steps <= 0) or (seconds is not None and seconds <= 0):
        raise ValueError(f"steps={steps} / seconds={seconds}: the budget must be positive")


def _set_learning_rate(optimizer, peak: float, step: int, warmup_steps: int, done: float) -> None:
    """Linear warm-up to ``peak``, then a cosine decay to 10% of it as ``done`` goes from 0 to 1."""
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    for group in optimizer.param_groups:
        group["lr"] = peak * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


def _corrupted_batch(
    chunks: Sequence[list[int]],
    order: list[int],
    rng: random.Random,
    tokenizer,
    sentinels: Sequence[int],
    batch_size: int,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> dict[str, torch.Tensor]:
    """``batch_size`` span-corrupted chunks as a padded batch, drawn from ``order`` (chunk indices).

    ``order`` is consumed from its end and refilled with a fresh shuffled pass over ``chunks``
    when it runs out, so every chunk is seen once per pass.
    """
    pairs = []
    for _ in range(batch_size):
        if not order:
            order.extend(range(len(chunks)))
            rng.shuffle(order)
        pairs.append(
            corrupt_spans(
                chunks[order.pop()],
                sentinels,
                tokenizer.eos_token_id,
                rng,
                noise_density=noise_density,
                mean_span_length=mean_span_length,
            )
        )
    return _batch(pairs, tokenizer.pad_token_id)
