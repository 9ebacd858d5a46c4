"""The shipped ``evaluate`` modules give exactly the tasks' own numbers (the trainer's), offline."""

import json

import evaluate
import pytest

from peft_hybrid.tasks import get_task, load_metric, metric_path


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_samsum_rouge_equals_the_task(tmp_path):
    rows = [
        {"id": "1", "source": "A: hi", "target": "Amanda baked cookies. She will bring Jerry some tomorrow."},
        {"id": "2", "source": "B: yo", "target": "Tom is late!\nHe'll call."},
        {"id": "3", "source": "C: ok", "target": "Nobody knows."},
    ]
    preds = ["Amanda baked cookies and will bring some.", "Tom will call. He is late.", "Everybody knows it all"]
    expected = get_task("samsum").compute_metrics(preds, rows)
    got = load_metric("samsum").compute(predictions=preds, references=[r["target"] for r in rows])
    assert got == expected
    # Whole rows as JSON are read the same way.
    assert load_metric("samsum").compute(predictions=preds, references=[json.dumps(r) for r in rows]) == expected
    assert 0 < expected["rouge2"] < expected["rouge1"] < 100


def test_sst2_accuracy_equals_the_task():
    targets = ["positive", "negative", "negative", "positive", "positive"]
    preds = ["Positive", " negative ", "positive", "very positive", "positive"]
    expected = get_task("sst2").compute_metrics(preds, [{"target": t} for t in targets])
    assert expected == {"accuracy": 60.0, "invalid_outputs": 1.0}
    assert load_metric("sst2").compute(predictions=preds, references=targets) == expected


def test_wikisql_logical_form_and_execution_accuracy_equal_the_task(tmp_path):
    tables = _jsonl(
        tmp_path / "dev.tables.jsonl",
        [{"id": "t-1", "header": ["Player", "No."], "types": ["text", "real"], "rows": [["Ann", 3], ["Bo", 7]]}],
    )
    data = _jsonl(
        tmp_path / "dev.jsonl",
        [
            {"phase": 1, "table_id": "t-1", "question": question, "sql": {"sel": 0, "agg": agg, "conds": conds}}
            for question, agg, conds in [
                ("Who wore 3?", 0, [[1, 0, 3]]),
                ("How many?", 3, []),
                ("Who wore 7?", 0, [[1, 0, 7]]),
            ]
        ],
    )
    rows = list(get_task("wikisql").load(data_file=data, tables_file=tables))
    preds = ["SELECT Player FROM table WHERE No. = 3.0", "not sql", "SELECT Player FROM table WHERE No. = 7"]
    expected = get_task("wikisql").compute_metrics(preds, rows)
    assert expected == {
        "logical_form_accuracy": pytest.approx(100 / 3),
        "exact_match": pytest.approx(100 / 3),
        "unparseable": 1.0,
        "execution_accuracy": pytest.approx(200 / 3),
    }
    got = evaluate.load(metric_path("wikisql")).compute(predictions=preds, references=[json.dumps(r) for r in rows])
    assert got == expected


def test_unknown_metric_and_bad_reference_are_refused():
    with pytest.raises(KeyError, match="available: samsum, sst2, wikisql"):
        metric_path("glue")
    with pytest.raises(ValueError, match="reference 0 is JSON list"):
        load_metric("sst2").compute(predictions=["positive"], references=["[1, 2]"])
