"""Span corruption: exact reconstruction, budget, determinism and that the base actually learns."""

import random

import pytest
import torch

from peft_hybrid.offline import t5_from_preset
from peft_hybrid.offline.pretrain import corrupt_spans, pack_texts, pretrain_span_corruption, sentinel_ids
from peft_hybrid.offline.synthetic import dialogue_summary_pairs

SENTINELS = list(range(1000, 900, -1))


def _reconstruct(inputs, labels):
    """Put each sentinel's span from the labels back into the input."""
    spans, current = {}, None
    for token in labels[:-1]:
        if token in SENTINELS:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    out = []
    for token in inputs[:-1]:
        out.extend(spans[token] if token in SENTINELS else [token])
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("length", [8, 33, 64])
def test_corrupt_spans_is_an_exact_split_of_the_chunk(seed, length):
    tokens = list(range(10, 10 + length))
    inputs, labels = corrupt_spans(tokens, SENTINELS, 1, random.Random(seed))
    assert inputs[-1] == labels[-1] == 1
    assert _reconstruct(inputs, labels) == tokens
    dropped = len(labels) - 1 - sum(t in SENTINELS for t in labels)
    assert dropped == min(max(round(length * 0.15), 1), length - 1)
    assert labels[0] == SENTINELS[0]  # sentinels are used in order from <extra_id_0>


def test_corrupt_spans_refuses_a_one_token_chunk():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        corrupt_spans([5], SENTINELS, 1, random.Random(0))


def test_pack_texts_chunks_and_errors():
    _, tok = t5_from_preset("tiny")
    chunks = pack_texts(tok, ["Amy: hi Ben"] * 40, 16)
    assert chunks and all(len(c) == 16 for c in chunks)
    assert tok.eos_token_id in chunks[0]  # documents are separated by </s>
    with pytest.raises(ValueError, match="fewer than one chunk"):
        pack_texts(tok, ["hi"], 64)
    assert sentinel_ids(tok)[0] == tok.convert_tokens_to_ids("<extra_id_0>")


def _texts():
    return [r["dialogue"] for r in dialogue_summary_pairs(200, seed=3)]


def test_pretraining_is_deterministic_learns_and_changes_every_weight():
    torch.set_num_threads(1)
    model_a, tok = t5_from_preset("tiny", seed=0)
    before = {k: v.clone() for k, v in model_a.state_dict().items()}
    result = pretrain_span_corruption(model_a, tok, _texts(), steps=40, batch_size=16, progress=False, seed=1)
    model_b, _ = t5_from_preset("tiny", seed=0)
    again = pretrain_span_corruption(model_b, tok, _texts(), steps=40, batch_size=16, progress=False, seed=1)
    assert result.steps == 40 and len(result.losses) == 40
    assert result.losses == again.losses
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    assert result.final_loss < result.first_loss - 0.5
    assert not model_a.training
    changed = [k for k, v in model_a.state_dict().items() if not torch.equal(v, before[k])]
    assert set(changed) == set(before)


def test_pretraining_budget_by_seconds_and_bad_budgets():
    model, tok = t5_from_preset("tiny")
    result = pretrain_span_corruption(model, tok, _texts(), seconds=0.5, batch_size=4, progress=False)
    # It ran until the budget was spent, one recorded loss per step taken.
    assert result.steps >= 1 and result.seconds >= 0.5 and len(result.losses) == result.steps
    with pytest.raises(ValueError, match="steps=... or seconds=..."):
        pretrain_span_corruption(model, tok, _texts(), progress=False)
    with pytest.raises(ValueError, match="must be positive"):
        pretrain_span_corruption(model, tok, _texts(), steps=0, progress=False)
