"""SAMSum: corpus ROUGE equal to rouge_score itself, sentence splitting, CSV/JSON readers."""

import csv
import json
import random

import pytest
from rouge_score import rouge_scorer

from peft_hybrid.tasks import DataError, get_task
from peft_hybrid.tasks.samsum import ROUGE_KEYS, rouge, split_sentences


def test_rouge_hand_computed():
    # 3 of 6 predicted unigrams match, all 3 reference unigrams found: F = 2*0.5*1/1.5.
    scores = rouge(["the cat sat on the mat"], ["the cat sat"])
    assert scores["rouge1"] == pytest.approx(200 / 3, abs=1e-9)
    # Porter stemming: "cats running" and "cat run" are the same tokens.
    assert rouge(["Cats running"], ["cat run"])["rouge1"] == pytest.approx(100.0)
    # Sentence order: one LCS over all tokens (rougeL) vs a union LCS per sentence (rougeLsum).
    swapped = rouge(["c d. a b."], ["a b. c d."])
    assert swapped["rougeL"] == pytest.approx(50.0)
    assert swapped["rougeLsum"] == pytest.approx(100.0)
    # The corpus score is the mean over examples.
    assert rouge(["a b", "x"], ["a b", "y"])["rouge1"] == pytest.approx(50.0)


def test_rouge_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        rouge([], [])


def test_split_sentences():
    assert split_sentences('He said "go!" Then left.\r\nOk?  Yes') == ['He said "go!"', "Then left.", "Ok?", "Yes"]
    assert split_sentences("3.5 km away") == ["3.5 km away"]
    assert split_sentences("") == []


def _write_csv(path, body: str):
    path.write_bytes(body.encode("utf-8"))
    return path


def test_reads_csv_with_crlf_turns(tmp_path):
    path = _write_csv(
        tmp_path / "val.csv",
        'id,summary,dialogue\r\n1,"Ann, Bo meet. ","Ann: hi, Bo\r\nBo: hey\r\n"\r\n2,x,B: y\r\n',
    )
    ds = get_task("samsum").load(data_file=path)
    assert ds.column_names == ["id", "source", "target"]
    assert ds[0] == {"id": "1", "source": "Ann: hi, Bo\nBo: hey", "target": "Ann, Bo meet."}
    assert len(ds) == 2


def test_reads_corpus_json(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps([{"id": "a", "summary": "S.", "dialogue": "A: x\r\nB: y"}]))
    assert get_task("samsum").load(data_file=path)[0]["source"] == "A: x\nB: y"


@pytest.fixture
def default_csv_field_limit():
    """csv's limit is process-wide: start from Python's default (131,072), put the previous one back."""
    previous = csv.field_size_limit(131_072)
    yield
    csv.field_size_limit(previous)


@pytest.mark.parametrize("delimited", ["csv", "tsv"])
def test_a_field_over_131072_characters_is_read(tmp_path, default_csv_field_limit, delimited):
    # The model truncates long inputs; the reader must not call a long dialogue "broken quoting".
    dialogue = "Ann: " + "la " * 60_000
    if delimited == "csv":
        path = _write_csv(tmp_path / "long.csv", f'id,summary,dialogue\r\n1,s,"{dialogue}"\r\n2,t,B: y\r\n')
        rows = get_task("samsum").load(data_file=path)
        assert [len(r["source"]) for r in rows] == [len(dialogue.strip()), 4]
    else:
        path = tmp_path / "long.tsv"
        path.write_text(f"sentence\tlabel\n{dialogue}\t1\nshort\t0\n", encoding="utf-8")
        rows = get_task("sst2").load(data_file=path)
        assert [len(r["source"]) for r in rows] == [len(dialogue.strip()), 5]
    assert len(dialogue) > 131_072


@pytest.mark.parametrize(
    "body, row, field, needle",
    [
        ("id,dialogue\r\n1,A: x\r\n", 0, "summary", "lacks column"),
        ("id,summary,dialogue\r\n1,s,A: x\r\n2,s,\r\n", 2, "dialogue", "dialogue is empty"),
        ("id,summary,dialogue\r\n1,  ,A: x\r\n", 1, "summary", "summary is empty"),
        ('id,summary,dialogue\r\n1,s,A: x\r\n2,"s" oops,A: y\r\n', 2, None, "broken quoting"),
        ('id,summary,dialogue\r\n1,s,"A: never closed\r\n', 1, None, "broken quoting"),
        ("id,summary,dialogue\r\n1,s,A: x,extra\r\n", 1, "dialogue", "expected 3 fields"),
    ],
)
def test_malformed_csv_names_file_row_field(tmp_path, body, row, field, needle):
    path = _write_csv(tmp_path / "bad.csv", body)
    with pytest.raises(DataError, match=needle) as info:
        get_task("samsum").load(data_file=path)
    assert (info.value.file, info.value.row, info.value.field) == (str(path), row, field)


def test_non_utf8_names_byte_offset_and_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,summary,dialogue\r\n1,s,A: x\r\n2,s,A: caf\xe9\r\n")
    with pytest.raises(DataError, match="byte offset 41") as info:
        get_task("samsum").load(data_file=path)
    assert (info.value.file, info.value.row) == (str(path), 2)


def test_json_missing_key_and_empty_file(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps([{"id": "a", "summary": "S.", "dialogue": "A: x"}, {"id": "b"}]))
    with pytest.raises(DataError, match="'summary' is missing") as info:
        get_task("samsum").load(data_file=path)
    assert (info.value.row, info.value.field) == (2, "summary")
    header_only = _write_csv(tmp_path / "empty.csv", "id,summary,dialogue\r\n")
    with pytest.raises(DataError, match="no examples"):
        get_task("samsum").load(data_file=header_only)


@pytest.mark.realdata
def test_real_validation_split_and_rouge_equals_rouge_score(shared_data):
    ds = get_task("samsum").load(data_file=shared_data / "samsum" / "val.csv")
    assert len(ds) == 818
    sources, targets = ds["source"], ds["target"]
    assert sum("\n" in s for s in sources) >= 800  # multi-turn dialogues kept as lines
    assert not any("\r" in s for s in sources)
    # Predictions that are neither trivial nor perfect: first turn, or another example's summary.
    rng = random.Random(0)
    shuffled = targets[:]
    rng.shuffle(shuffled)
    preds = [s.split("\n")[0] if i % 2 else shuffled[i] for i, s in enumerate(sources)]
    ours = get_task("samsum").compute_metrics(preds, ds)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    direct = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(preds, targets):
        plain = scorer.score(ref, pred)
        by_line = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))
        for key in ("rouge1", "rouge2", "rougeL"):
            direct[key] += plain[key].fmeasure
        direct["rougeLsum"] += by_line["rougeLsum"].fmeasure
    for key in ROUGE_KEYS:
        assert ours[key] == pytest.approx(100 * direct[key] / len(preds), abs=1e-9)
    assert 5 < ours["rouge1"] < 60
    assert ours["rougeLsum"] != pytest.approx(ours["rougeL"], abs=1e-6)
