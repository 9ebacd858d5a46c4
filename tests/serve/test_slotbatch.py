"""The fixed-shape running batch (`peft_hybrid.serve.slotbatch.SlotBatch`) on the tiny preset.

Rows join and leave at chosen steps, each with its own adapter (soft prompts of two lengths +
LoRA, LoRA only, the bare base); every row's greedy tokens must equal offline ``generate`` of that row alone
(fp32), also when the run outlasts the cache's columns (the cache shifts), and the decoder step
compiles exactly once while rows come and go. The compile is dynamo with ``backend="eager"``
(tracing only) except in the one inductor test.
"""

from __future__ import annotations

import pytest
import torch

from helpers import mixed_model
from peft_hybrid.inference import GenerationBuckets
from peft_hybrid.serve.rowbatch import RowBatch
from peft_hybrid.serve.slotbatch import SlotBatch
from peft_hybrid.training.speed import dynamo_counters

TEXTS = [
    "Amy: see you at 5?",
    "Bob: running late, sorry",
    "Ann: hi",
    "Zed: what is up with the thing we talked about yesterday at lunch",
    "Kim: ok",
    "Lea: can you bring the charger? Max: yes",
]
NAMES = ["default", "lora", "__base__", "short", "default", "__base__"]
NEW_TOKENS = [30, 7, 20, 12, 25, 9]
JOINS = {0: [0, 1], 3: [2], 9: [3, 5], 15: [4]}  # step -> requests joining then (if a slot is free)


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.fixture(scope="module")
def mixed():
    return mixed_model()


def offline(model, tokenizer, row: int, text: str | None = None) -> list[int]:
    batch = tokenizer([text or TEXTS[row]], return_tensors="pt")
    out = model.generate(**batch, adapter_names=[NAMES[row]], max_new_tokens=NEW_TOKENS[row])
    return out[0, 1:].tolist()


def drive(model, tokenizer, batch: SlotBatch, texts=TEXTS, joins=JOINS, after_step=None) -> dict[int, list[int]]:
    """The scheduler's loop over ``batch``: rows join at their step (when a slot is free), leave at their length."""
    live, done, waiting, step, next_tokens = [], {}, [], 0, None
    while len(done) < len(texts):
        waiting += joins.get(step, [])
        joining = waiting[: batch.slots - len(live)]
        waiting = waiting[len(joining) :]
        if joining:
            batch.close_adapters()  # the joining rows' encoder pass hooks the layers with their own LoRA
            ids = [tokenizer(texts[i]).input_ids for i in joining]
            new, logits = RowBatch.prefill(model, ids, [NAMES[i] for i in joining], tokenizer.pad_token_id)
            tokens = logits.argmax(-1)
            batch.concat(new)
            live += [(i, [t]) for i, t in zip(joining, tokens.tolist())]
            next_tokens = tokens if next_tokens is None else torch.cat([next_tokens, tokens])
        keep = [k for k, (i, out) in enumerate(live) if len(out) < NEW_TOKENS[i]]
        done.update({i: out for k, (i, out) in enumerate(live) if k not in keep})
        if len(keep) < len(live):
            batch.filter(keep)
            live, next_tokens = [live[k] for k in keep], next_tokens[keep] if keep else None
        if live:
            next_tokens = batch.step(next_tokens).argmax(-1)
            for (_, out), token in zip(live, next_tokens.tolist()):
                out.append(token)
        step += 1
        if after_step is not None:
            after_step(step)
    batch.close_adapters()
    return done


def test_rows_joining_and_leaving_equal_offline_generate_and_compile_once(mixed):
    model, tokenizer = mixed
    expected = {row: offline(model, tokenizer, row) for row in range(len(TEXTS))}
    batch = SlotBatch(model, slots=4, columns=64, backend="eager")
    counts = {}
    got = drive(model, tokenizer, batch, after_step=lambda step: counts.setdefault(step, dynamo_counters()))
    assert got == expected
    # One graph at the first step; rows joining, leaving, a full batch and a free slot change nothing.
    assert counts[1] == {"frames": 1, "graphs": 1, "graph_breaks": 0}
    assert dynamo_counters() == counts[1]
    assert len(batch) == 0


def test_a_run_longer_than_the_cache_shifts_it_and_still_equals_offline(mixed, monkeypatch):
    model, tokenizer = mixed
    expected = {row: offline(model, tokenizer, row) for row in range(len(TEXTS))}
    shifts = []
    shift = SlotBatch._shift
    monkeypatch.setattr(SlotBatch, "_shift", lambda self: (shifts.append(self._t), shift(self))[1])
    batch = SlotBatch(model, slots=4, columns=32, backend="eager")  # the run lasts 40 steps
    counts = {}
    got = drive(model, tokenizer, batch, after_step=lambda step: counts.setdefault(step, dynamo_counters()))
    assert got == expected
    assert shifts == [32]  # the cache filled up once, and shifting it compiled nothing new
    assert dynamo_counters() == counts[1]


def test_a_longer_source_grows_to_the_next_bucket_with_one_more_compile(mixed):
    model, tokenizer = mixed
    long_text = " ".join(["the train is cancelled again and I will take the bus"] * 4)
    texts = [*TEXTS[:3], long_text]
    assert len(tokenizer(long_text).input_ids) + 4 > 16  # past the first source bucket (prompt included)
    expected = {row: offline(model, tokenizer, row, texts[row]) for row in range(4)}
    batch = SlotBatch(model, slots=4, columns=64, backend="eager", buckets=GenerationBuckets(length_multiple=16))
    counts = {}
    joins = {0: [0, 1], 3: [2], 9: [3]}
    got = drive(model, tokenizer, batch, texts, joins, lambda step: counts.setdefault(step, dynamo_counters()))
    assert got == expected
    assert counts[9]["frames"] == 1 and dynamo_counters()["frames"] == 2  # the longer source: one recompile


def test_more_lora_adapters_than_slots_gather_only_the_rows_own_and_equal_offline(mixed, monkeypatch):
    from peft_hybrid.serve import slotbatch

    model, tokenizer = mixed
    plans = []
    plan = slotbatch.mixed_plan
    monkeypatch.setattr(slotbatch, "mixed_plan", lambda m, names, **k: (plans.append(k), plan(m, names, **k))[1])
    expected = {row: offline(model, tokenizer, row) for row in range(len(TEXTS))}
    got = drive(model, tokenizer, SlotBatch(model, slots=1, columns=32, backend="eager"))  # 3 LoRA adapters, 1 slot
    assert got == expected
    assert plans and all(k == {"only_named": True} for k in plans)


def test_too_many_rows_or_a_batch_too_short_are_refused(mixed):
    model, tokenizer = mixed
    with pytest.raises(ValueError, match="slots"):
        SlotBatch(model, slots=0, columns=8, backend="eager")
    batch = SlotBatch(model, slots=2, columns=8, backend="eager")
    ids = [tokenizer(t).input_ids for t in TEXTS[:3]]
    new, _ = RowBatch.prefill(model, ids, NAMES[:3], tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="3 rows join but only 2 of 2 slots are free"):
        batch.concat(new)


def test_sized_fits_a_servers_limits(mixed):
    model, _ = mixed
    batch = SlotBatch.sized(model, max_batch_size=5, max_new_tokens=40, backend="eager")
    assert (batch.slots, batch.columns) == (8, 96)  # a batch bucket of rows; 40 tokens rounded up, plus a bucket


@pytest.mark.slow  # inductor builds C++ kernels: about half a minute on 2 busy cores
def test_inductor_slot_batch_equals_offline(mixed):
    model, tokenizer = mixed
    expected = {row: offline(model, tokenizer, row) for row in range(len(TEXTS))}
    assert drive(model, tokenizer, SlotBatch(model, slots=4, columns=32)) == expected
    assert dynamo_counters()["frames"] == 1 and dynamo_counters()["graph_breaks"] == 0


def test_transformers_static_cache_behaves_as_the_slot_batch_relies_on(mixed):
    # The slot batch sets a static layer's write column (``cumulative_length``) itself and marks a
    # filled cross-attention cache through its length; an upgrade that changes either fails here.
    import transformers
    from transformers.cache_utils import EncoderDecoderCache, StaticCache

    versions = f"transformers {transformers.__version__}"
    base = mixed[0].base_model
    config = base.get_decoder().config
    cache = StaticCache(config=config, max_cache_len=8)
    cache.early_initialization(2, config.num_heads, config.d_kv, torch.float32, torch.device("cpu"))
    layer = cache.layers[0]
    layer.cumulative_length.fill_(5)
    keys = torch.ones(2, config.num_heads, 1, config.d_kv)
    layer.update(keys, keys)
    assert bool(layer.keys[:, :, 5].eq(1).all()) and int(cache.get_seq_length(0)) == 6, (
        f"StaticLayer.cumulative_length is no longer the column update writes at, with {versions}"
    )
    cross = StaticCache(config=config, max_cache_len=4)
    cross.early_initialization(2, config.num_heads, config.d_kv, torch.float32, torch.device("cpu"))
    for filled in cross.layers:
        filled.cumulative_length.fill_(4)
    assert all(EncoderDecoderCache(cache, cross).is_updated.values()), (
        f"EncoderDecoderCache no longer reads a cross-attention cache's length as filled, with {versions}"
    )
