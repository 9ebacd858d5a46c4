"""Trainer callbacks: per-evaluation prediction/metric files and the training summary for the card.

`EvalOutputWriter` writes, into ``args.output_dir``, one ``<prefix>_predictions-<step>.jsonl``
(source / reference / prediction per example) and one ``<prefix>_metrics-<step>.json`` per
evaluation, where ``<prefix>`` is the metric prefix (``eval``, ``test``, ``eval_<name>``).
`TrainingSummaryCallback` fills a `TrainingSummary` (hyperparameters, the training-loss curve,
every evaluation, the best checkpoint) and saves it as ``training_summary.json``, the data a
model card is rendered from. `peft_hybrid.training.trainer.HybridTrainer` adds both; they work with any
``transformers.Trainer`` too (the writer then only writes metrics, having no decoded rows).

Example:
    >>> summary = TrainingSummary(task="sst2")
    >>> summary.training_curve.append({"step": 10, "epoch": 1.0, "loss": 0.7})
    >>> summary.to_dict()["training_curve"][0]["loss"]
    0.7
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from peft_hybrid.modeling.serialization import atomic_write_bytes

logger = logging.getLogger(__name__)

SUMMARY_NAME = "training_summary.json"
# Training arguments that describe a run in a model card (the paper's table of settings).
_CARD_ARGS = (
    "learning_rate",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
    "train_sampling_strategy",
    "metric_for_best_model",
    "greater_is_better",
    "early_stopping_patience",
    "early_stopping_threshold",
    "max_source_length",
    "max_target_length",
    "task",
)
# Per-step log keys kept in the training curve.
_CURVE_KEYS = ("loss", "learning_rate", "grad_norm")


@dataclass
class EvalRecord:
    """Decoded outputs of one evaluation, handed from the trainer to `EvalOutputWriter`.

    Attributes:
        prefix: the metric key prefix of that evaluation (``"eval"``, ``"test"``, ...).
        rows: one ``{"source", "reference", "prediction"}`` dict per example, in dataset order.
    """

    prefix: str
    rows: list[dict[str, Any]]


@dataclass
class TrainingSummary:
    """What a model card reports about a training run; JSON-serialisable through `to_dict`.

    Attributes:
        task: task name, or ``None`` for a task-less run.
        hyperparameters: training arguments and adapter settings (see ``_CARD_ARGS``).
        model: adapter mode, trainable and total parameter counts.
        training_curve: ``{"step", "epoch", "loss", ...}`` per logging step.
        evaluations: every evaluation's metrics with its ``step`` and ``epoch``.
        best: ``{"metric", "value", "checkpoint", "step"}`` once a best checkpoint is known.
        final: the last evaluation's metrics (after ``load_best_model_at_end``, the best model's).

    Example:
        >>> TrainingSummary(task="samsum").to_dict()["task"]
        'samsum'
    """

    task: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    training_curve: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return plain_json(asdict(self))

    def save(self, directory: str | Path) -> Path:
        """Write ``training_summary.json`` into ``directory`` (atomically)."""
        path = Path(directory) / SUMMARY_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainingSummary:
        """Read a saved summary (a folder holding ``training_summary.json``, or the file)."""
        path = Path(path)
        path = path / SUMMARY_NAME if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass the output_dir of a HybridTrainer run.")
        data = json.loads(path.read_text(encoding="utf-8"))
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{path} has unknown field(s) {unknown}; was it written by a newer peft_hybrid?")
        return cls(**data)


class TrainingSummaryCallback(TrainerCallback):
    """Collects a `TrainingSummary` during training and saves it on every evaluation and at the end.

    Example:
        >>> callback = TrainingSummaryCallback(task="sst2")
        >>> callback.summary.task
        'sst2'
    """

    def __init__(self, task: str | None = None) -> None:
        self.summary = TrainingSummary(task=task)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.summary.hyperparameters = plain_json({k: getattr(args, k) for k in _CARD_ARGS if hasattr(args, k)})
        hybrid_config = getattr(model, "hybrid_config", None)
        if hybrid_config is not None:
            self.summary.hyperparameters["adapter"] = hybrid_config.adapter_settings()
            self.summary.model = {
                "mode": hybrid_config.mode,
                "base_model": hybrid_config.base_model_name_or_path,
                "base_quantization": hybrid_config.base_quantization,
                "trainable_params": model.num_parameters(trainable_only=True),
                "total_params": model.num_parameters(),
            }

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:  # a training-step log, not an evaluation or the end-of-training summary
            point = {"step": state.global_step, "epoch": state.epoch}
            point.update({k: logs[k] for k in _CURVE_KEYS if k in logs})
            self.summary.training_curve.append(point)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        record = {"step": state.global_step, "epoch": state.epoch, **(metrics or {})}
        self.summary.evaluations.append(record)
        self.summary.final = dict(record)
        self._update_best(state)
        self._save(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._update_best(state)
        if args.load_best_model_at_end and state.best_global_step is not None:
            # The model now holds the best checkpoint's adapter: report that evaluation.
            at_best = [e for e in self.summary.evaluations if e["step"] == state.best_global_step]
            if at_best:
                self.summary.final = dict(at_best[-1])
        self._save(args, state)

    def _update_best(self, state) -> None:
        if state.best_metric is not None:
            self.summary.best = {
                "metric": self.summary.hyperparameters.get("metric_for_best_model"),
                "value": state.best_metric,
                "step": state.best_global_step,
                "checkpoint": Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
            }

    def _save(self, args, state) -> None:
        if state.is_world_process_zero:
            self.summary.save(args.output_dir)


class EvalOutputWriter(TrainerCallback):
    """Writes each evaluation's predictions (JSON Lines) and metrics (JSON) into ``args.output_dir``.

    The trainer hands over the decoded rows by setting `pending` before the evaluation's
    ``on_evaluate``/``on_predict`` fires; without rows only the metrics file is written.

    Example:
        >>> writer = EvalOutputWriter()
        >>> writer.pending = EvalRecord("eval", [{"source": "hi", "reference": "a", "prediction": "a"}])
    """

    def __init__(self) -> None:
        self.pending: EvalRecord | None = None
        self.written: list[Path] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._write(args, state, metrics or {})

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._write(args, state, metrics or {})

    def _write(self, args, state, metrics: dict[str, Any]) -> None:
        record, self.pending = self.pending, None
        if not state.is_world_process_zero:
            return
        prefix = record.prefix if record is not None else _prefix_of(metrics)
        directory = Path(args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        step = state.global_step
        metrics_path = directory / f"{prefix}_metrics-{step}.json"
        payload = {"step": step, "epoch": state.epoch, **metrics}
        atomic_write_bytes(metrics_path, (json.dumps(plain_json(payload), indent=2, sort_keys=True) + "\n").encode())
        self.written.append(metrics_path)
        if record is not None:
            path = directory / f"{prefix}_predictions-{step}.jsonl"
            lines = "".join(json.dumps(plain_json(row), ensure_ascii=False) + "\n" for row in record.rows)
            atomic_write_bytes(path, lines.encode("utf-8"))
            self.written.append(path)
        logger.info("step %d %s: %s", step, prefix, {k: v for k, v in metrics.items() if not k.endswith("_runtime")})


def _prefix_of(metrics: dict[str, Any]) -> str:
    """``eval`` from ``eval_loss`` etc.: the part before the last key's metric name."""
    for key in metrics:
        if key.endswith("_loss"):
            return key[: -len("_loss")]
    return "eval"


def plain_json(value: Any) -> Any:
    """Plain JSON types; NaN/inf become None (JSON has no literal for them), enums their value.

    Example:
        >>> from transformers.trainer_utils import SchedulerType
        >>> plain_json({"lr_scheduler_type": SchedulerType.COSINE, "loss": float("nan")})
        {'lr_scheduler_type': 'cosine', 'loss': None}
    """
    if isinstance(value, Enum):  # before str: transformers' enums are str subclasses that print as Class.MEMBER
        return plain_json(value.value)
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return plain_json(value.item())
    return str(value)


def decoded_rows(
    sources: Sequence[str], references: Sequence[str], predictions: Sequence[str]
) -> list[dict[str, str]]:
    """Pair sources, references and predictions into the rows `EvalOutputWriter` writes."""
    return [
        {"source": s, "reference": r, "prediction": p}
        for s, r, p in zip(sources, references, predictions, strict=True)
    ]
