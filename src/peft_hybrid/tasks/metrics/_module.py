"""What the three shipped ``evaluate`` metric modules share: a task's own `Task.compute_metrics`
wrapped as an ``evaluate.Metric``, so the numbers are the trainer's by construction.

``references`` are JSON strings: each is one example row as the task's loader yields it (a
plain string is read as the row's ``target``, which is all SAMSum and SST-2 need).
"""

from __future__ import annotations

import json
from typing import Any

import datasets
import evaluate


def reference_rows(references: list[str]) -> list[dict[str, Any]]:
    """Decode ``references``: a JSON object is a whole example row, anything else its ``target``."""
    rows = []
    for index, reference in enumerate(references):
        try:
            value = json.loads(reference)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            rows.append(value)
        elif isinstance(value, str) or value is None:
            rows.append({"target": reference})
        else:
            raise ValueError(
                f"reference {index} is JSON {type(value).__name__}, not an example row; pass the target "
                "text or json.dumps(row) of a row from the task's loader"
            )
    return rows


def task_metric(task_name: str, description: str) -> type[evaluate.Metric]:
    """An ``evaluate.Metric`` class scoring predictions with ``get_task(task_name).compute_metrics``."""

    class TaskMetric(evaluate.Metric):
        def _info(self) -> evaluate.MetricInfo:
            return evaluate.MetricInfo(
                description=description,
                citation="",
                inputs_description=(
                    "predictions: generated texts; references: the target text, or json.dumps of the "
                    "example row (needed where the metric reads more than the target, e.g. WikiSQL)."
                ),
                features=datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            )

        def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
            from peft_hybrid.tasks import get_task

            return get_task(task_name).compute_metrics(list(predictions), reference_rows(list(references)))

    TaskMetric.__name__ = TaskMetric.__qualname__ = f"{task_name.capitalize()}Metric"
    return TaskMetric
