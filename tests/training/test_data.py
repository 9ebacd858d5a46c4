"""Tokenization with truncation counts, dynamic-padding collator, padding statistics."""

import datasets
import pytest

from peft_hybrid.offline import offline_tokenizer
from peft_hybrid.tasks import get_task
from peft_hybrid.training.data import Seq2SeqCollator, length_grouped_order, padding_stats, tokenize_dataset


@pytest.fixture(scope="module")
def tokenizer():
    return offline_tokenizer()


def _dataset(sources, targets):
    return datasets.Dataset.from_dict({"input_text": sources, "target": targets})


def test_tokenize_counts_truncation(tokenizer):
    sources = ["the cat sat", "the cat sat on the mat " * 20, "a"]
    targets = ["positive", "negative " * 30, "positive"]
    full = [len(tokenizer(s)["input_ids"]) for s in sources]
    tokenized, stats = tokenize_dataset(_dataset(sources, targets), tokenizer, 16, 8)
    assert stats == {
        "examples": 3,
        "truncated_sources": sum(n > 16 for n in full),
        "truncated_targets": 1,
        "max_source_tokens": 16,
        "max_target_tokens": 8,
    }
    assert stats["truncated_sources"] == 1
    row = tokenized[1]
    assert len(row["input_ids"]) == 16 and row["input_ids"][-1] == tokenizer.eos_token_id
    assert row["labels"][-1] == tokenizer.eos_token_id
    assert tokenized["length"] == [len(ids) for ids in tokenized["input_ids"]]
    assert tokenized[0]["input_ids"] == tokenizer(sources[0])["input_ids"]  # untouched if short


def test_tokenize_requires_formatted_inputs(tokenizer):
    ds = datasets.Dataset.from_dict({"source": ["x"], "target": ["y"]})
    with pytest.raises(ValueError, match="format_dataset"):
        tokenize_dataset(ds, tokenizer, 8, 8)
    formatted = get_task("samsum").format_dataset(ds, use_task_tags=True)
    assert formatted["input_text"] == ["summarize: x"]
    assert tokenize_dataset(formatted, tokenizer, 8, 8)[1]["examples"] == 1


def test_collator_pads_to_batch_maximum(tokenizer):
    tokenized, _ = tokenize_dataset(
        _dataset(["a b", "the cat sat on the mat"], ["x", "positive negative"]), tokenizer, 64, 64
    )
    batch = Seq2SeqCollator(tokenizer)([tokenized[0], tokenized[1]])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # "length" dropped
    longest = max(tokenized["length"])
    assert batch["input_ids"].shape == (2, longest)
    short = tokenized["length"][0]
    assert batch["attention_mask"][0].sum().item() == short
    assert (batch["input_ids"][0, short:] == tokenizer.pad_token_id).all()
    n_label = len(tokenized[0]["labels"])
    assert (batch["labels"][0, n_label:] == -100).all()
    assert batch["labels"].shape[1] == max(len(x) for x in tokenized["labels"])


def test_padding_stats_hand_computed():
    stats = padding_stats([3, 5, 4, 10], batch_size=2, pad_to=16, mega_batch_mult=2)
    # One mega-batch holds everything: sorted 10,5 | 4,3 -> 2*10 + 2*4 = 28 tokens.
    assert stats["real_tokens"] == 22
    assert stats["fixed_tokens"] == 64
    assert stats["grouped_dynamic_tokens"] == 28
    assert stats["grouped_dynamic_pad_fraction"] == pytest.approx(6 / 28)
    assert stats["fixed_pad_fraction"] == pytest.approx(42 / 64)
    assert 28 <= stats["random_dynamic_tokens"] <= 40
    order = length_grouped_order([3, 5, 4, 10], 2, mega_batch_mult=2, seed=1)
    assert order == [3, 1, 2, 0]
    with pytest.raises(ValueError, match="more than pad_to"):
        padding_stats([600], batch_size=1)


@pytest.mark.realdata
def test_grouping_saves_padding_on_real_samsum(shared_data, tokenizer):
    task = get_task("samsum")
    ds = task.format_dataset(task.load(data_file=shared_data / "samsum" / "val.csv"), False)
    tokenized, stats = tokenize_dataset(ds, tokenizer, 512, 128)
    assert stats["examples"] == 818
    result = padding_stats(tokenized["length"], batch_size=16)
    assert result["real_tokens"] == sum(tokenized["length"])
    assert result["fixed_tokens"] == 818 * 512
    assert (
        result["real_tokens"]
        <= result["grouped_dynamic_tokens"]
        < result["random_dynamic_tokens"]
        < result["fixed_tokens"]
    )
