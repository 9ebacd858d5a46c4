"""The built-in tasks' metrics as ``evaluate`` modules shipped inside the package.

Each module wraps its task's own ``compute_metrics`` (one implementation, the trainer's numbers)
and loads offline from its file, with no Hub download:

    >>> from peft_hybrid.tasks import load_metric
    >>> sst2 = load_metric("sst2")
    >>> sst2.compute(predictions=["positive", "Negative", "meh"], references=["positive", "positive", "negative"])
    {'accuracy': 33.333333333333336, 'invalid_outputs': 1.0}

``evaluate.load(metric_path("samsum"))`` is the same thing spelled with ``evaluate`` alone.
References are the target texts, or ``json.dumps`` of whole example rows where the metric reads
more than the target (WikiSQL needs the header and the gold query).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
METRIC_TASKS = ("samsum", "sst2", "wikisql")


def metric_path(task: str) -> str:
    """Path of the ``evaluate`` module for a built-in task (pass it to ``evaluate.load``)."""
    if task not in METRIC_TASKS:
        raise KeyError(f"no shipped metric for task {task!r}; available: {', '.join(METRIC_TASKS)}")
    return str(_HERE / f"{task}.py")


def load_metric(task: str, **kwargs: Any):
    """``evaluate.load`` of the task's shipped metric module; keyword arguments go to ``evaluate.load``."""
    import evaluate

    return evaluate.load(metric_path(task), **kwargs)
