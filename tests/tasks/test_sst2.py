"""SST-2: label-word accuracy with invalid outputs counted, GLUE TSV reader."""

import pytest

from peft_hybrid.tasks import DataError, get_task
from peft_hybrid.tasks.sst2 import accuracy


def test_accuracy_hand_computed():
    preds = ["positive", " Negative\n", "POSITIVE", "neutral", "positive."]
    refs = ["positive", "negative", "negative", "positive", "positive"]
    # Right: 1 and 2. Wrong label: 3. Invalid (neither word): 4 and 5.
    assert accuracy(preds, refs) == {"accuracy": 40.0, "invalid_outputs": 2.0}
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        accuracy(["a", "b"], ["a"])


def test_reads_glue_tsv_with_bare_quotes(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text('sentence\tlabel\na "quoted , fine" film \t1\ndull \t0\n', encoding="utf-8")
    ds = get_task("sst2").load(data_file=path)
    assert ds[0] == {"source": 'a "quoted , fine" film', "target": "positive", "label": 1}
    assert ds[1]["target"] == "negative"
    assert get_task("sst2").compute_metrics(["positive", "positive"], ds)["accuracy"] == 50.0


@pytest.mark.parametrize(
    "body, row, field, needle",
    [
        ("text\tlabel\nfine\t1\n", 0, "sentence", "lacks column"),
        ("sentence\tlabel\nfine\t1\nbad\t2\n", 2, "label", "not 0"),
        ("sentence\tlabel\nfine\t\n", 1, "label", "not 0"),
        ("sentence\tlabel\nfine\t-1\n", 1, "label", "test split has no labels"),
        ("sentence\tlabel\n \t1\n", 1, "sentence", "missing or empty"),
        ("sentence\tlabel\nfine\n", 1, "label", "expected 2 fields"),
    ],
)
def test_malformed_tsv_names_file_row_field(tmp_path, body, row, field, needle):
    path = tmp_path / "bad.tsv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(DataError, match=needle) as info:
        get_task("sst2").load(data_file=path)
    assert (info.value.file, info.value.row, info.value.field) == (str(path), row, field)


def test_test_split_is_not_offered():
    with pytest.raises(ValueError, match="no split 'test'"):
        get_task("sst2").load("test")


@pytest.mark.realdata
def test_real_dev_split(shared_data):
    ds = get_task("sst2").load(data_file=shared_data / "sst2" / "dev.tsv")
    assert len(ds) == 872
    assert ds["label"].count(1) == 444 and ds["label"].count(0) == 428
    assert all(s == s.strip() for s in ds["source"])
    metrics = get_task("sst2").compute_metrics(["positive"] * 872, ds)
    assert metrics == {"accuracy": pytest.approx(100 * 444 / 872), "invalid_outputs": 0.0}
