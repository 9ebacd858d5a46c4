"""The tables and values of a model card: metrics, hyperparameters, inference settings, the ablation."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_hybrid.hub.card import CardData


def task_of(name: str):
    """The registered task called ``name``."""
    from peft_hybrid.tasks import get_task

    return get_task(name)


def strip_prefix(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {(k[len("eval_") :] if k.startswith("eval_") else k): v for k, v in metrics.items()}


def evaluation(summary: Mapping[str, Any], step: int | None) -> dict[str, Any]:
    evaluations = summary.get("evaluations") or []
    if step is not None:
        for record in evaluations:
            if record.get("step") == step:
                return metrics_only(record)
    return metrics_only(summary.get("final") or (evaluations[-1] if evaluations else {}))


def metrics_only(record: Mapping[str, Any]) -> dict[str, Any]:
    # Bookkeeping keys of an evaluation record, not metrics.
    skip = {"step", "epoch"}
    return {
        k: v
        for k, v in record.items()
        if k not in skip and not k.endswith(("_runtime", "_per_second")) and isinstance(v, (int, float))
    }


def metric_rows(data: CardData) -> list[tuple[str, Any]]:
    """(label, value) for the results table: the task's card metrics first, then the rest."""
    rows, shown = [], set()
    if data.task is not None:
        for key, _, name in task_of(data.task).card_metadata["metrics"]:
            if data.results.get(key) is not None:
                rows.append((name, data.results[key]))
                shown.add(key)
    rows.extend((key, value) for key, value in sorted(data.results.items()) if key not in shown and value is not None)
    return rows


def format_value(value: Any) -> str:
    """Table cell text: floats to 4 decimals (the metadata keeps exact values), lists joined."""
    if value is None:
        return "–"
    if isinstance(value, Enum):  # transformers' str enums would print as SchedulerType.COSINE
        return format_value(value.value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:  # eps 1e-8 must not print as 0
            return f"{value:g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def inference_settings(config: Any) -> dict[str, Any] | None:
    """How inputs are formatted and outputs generated, in the card's words (``None``: not recorded)."""
    saved = config.inference
    if saved is None:
        return None
    tags = config.uses_task_tags if saved.use_task_tags is None else saved.use_task_tags
    prefix = f'"{saved.task_prefix}"' if saved.task_prefix is not None else "the task tag" if tags else "none"
    return {"input prefix": prefix, "max source length": saved.max_source_length, **saved.generation}


def hyperparameter_rows(data: CardData) -> list[tuple[str, Any]]:
    return list(data.adapter.items()) + [(k, v) for k, v in sorted(data.hyperparameters.items()) if v is not None]


def ablation_table(data: CardData) -> dict[str, Any] | None:
    if not data.ablation:
        return None
    columns: list[str] = []
    tables = [(row["mode"], strip_prefix(metrics_only(row.get("metrics", {})))) for row in data.ablation]
    for _, metrics in tables:
        columns.extend(k for k in metrics if k not in columns)
    rows = [(mode, [metrics.get(c) for c in columns]) for mode, metrics in tables]
    return {"columns": columns, "rows": rows}
