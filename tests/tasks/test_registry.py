"""Task registry and the settings every built-in task declares."""

import datasets
import pytest

from peft_hybrid.tasks import Task, get_task, list_tasks, register_task, unregister_task


def test_builtins_are_registered():
    assert {"samsum", "sst2", "wikisql"} <= set(list_tasks())
    assert list_tasks() == sorted(list_tasks())


def test_unknown_name_lists_registered_ones():
    with pytest.raises(KeyError, match="unknown task 'nope'.*samsum, sst2, wikisql"):
        get_task("nope")


def test_register_instance_and_decorator():
    task = Task(name="toy", metric_for_best_model="accuracy")
    try:
        assert register_task(task) is task
        assert get_task("toy") is task
        with pytest.raises(ValueError, match="already registered"):
            register_task(Task(name="toy"))
        other = Task(name="toy", greater_is_better=False)
        register_task(other, overwrite=True)
        assert get_task("toy") is other

        @register_task
        class Toy2(Task):
            def __init__(self):
                super().__init__(name="toy2")

        assert isinstance(get_task("toy2"), Toy2)
        with pytest.raises(ValueError, match="has no name"):
            register_task(Task())
        with pytest.raises(TypeError, match="expects a Task"):
            register_task(object())
    finally:
        unregister_task("toy")
        unregister_task("toy2")
    assert "toy" not in list_tasks()


@pytest.mark.parametrize(
    "name, max_new_tokens, metric, task_type",
    [
        ("samsum", 128, "rougeL", "summarization"),
        ("wikisql", 96, "logical_form_accuracy", "text-generation"),
        ("sst2", 3, "accuracy", "text-classification"),
    ],
)
def test_builtin_settings(name, max_new_tokens, metric, task_type):
    task = get_task(name)
    assert task.generation_kwargs["max_new_tokens"] == max_new_tokens
    assert task.metric_for_best_model == metric and task.greater_is_better
    card = task.card_metadata
    assert card["task_type"] == task_type
    assert card["dataset"]["id"] == task.hub_dataset.id
    assert card["dataset"]["split"] == "validation"
    assert metric in [key for key, _, _ in card["metrics"]]


def test_format_input_tags():
    task = get_task("samsum")
    example = {"source": "A: hi\nB: hey"}
    assert task.format_input(example, use_task_tags=False) == "A: hi\nB: hey"
    assert task.format_input(example, use_task_tags=True) == "summarize: A: hi\nB: hey"
    assert task.format_input(example, use_task_tags=False, task_prefix="tl;dr: ").startswith("tl;dr")
    assert task.format_input(example, use_task_tags=True, task_prefix="") == "A: hi\nB: hey"


def test_hub_records_are_normalised_like_files(monkeypatch):
    """The Hub path (offline here) maps each mirror's schema onto the same columns."""
    records = {
        "knkarthick/samsum": [{"id": "1", "dialogue": "A: hi\r\nB: yo", "summary": "Greeting. "}],
        "nyu-mll/glue": [{"sentence": "fine film ", "label": 1, "idx": 0}],
        "Salesforce/wikisql": [
            {
                "phase": 1,
                "question": "Who?",
                "table": {"id": "t-1", "header": ["Name", "No."], "types": ["text", "real"], "rows": [["Ann", "3"]]},
                "sql": {
                    "human_readable": "SELECT Name FROM table WHERE No. = 3",
                    "sel": 0,
                    "agg": 0,
                    "conds": {"column_index": [1], "operator_index": [0], "condition": ["3"]},
                },
            }
        ],
    }
    calls = []

    def fake_load_dataset(repo, config, split, revision):
        calls.append((repo, config, split, revision))
        return datasets.Dataset.from_list(records[repo])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    samsum = get_task("samsum").load("validation")
    assert samsum[0] == {"id": "1", "source": "A: hi\nB: yo", "target": "Greeting."}
    assert get_task("sst2").load()[0]["target"] == "positive"
    wikisql = get_task("wikisql").load("test")
    assert wikisql[0]["target"] == "SELECT Name FROM table WHERE No. = 3"
    assert wikisql[0]["source"] == "Who? | columns: Name | No."
    assert get_task("wikisql").compute_metrics([wikisql[0]["target"]], wikisql)["execution_accuracy"] == 100.0
    assert calls == [
        ("knkarthick/samsum", None, "validation", None),
        ("nyu-mll/glue", "sst2", "validation", None),
        ("Salesforce/wikisql", None, "test", "refs/convert/parquet"),
    ]
