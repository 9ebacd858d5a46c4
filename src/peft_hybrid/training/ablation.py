"""The paper's ablation (its Table 2): base / prompt only / LoRA only / hybrid under one budget.

Every mode runs the training recipe (`peft_hybrid.training.recipe.main`) with the same data, inputs,
steps or epochs, learning rate, batch size and seed; only ``HybridConfig.mode`` changes. Mode
``none`` trains nothing and scores the base model. Each mode's adapter (or checkpoint-free
baseline) lands in ``<output_dir>/<mode>/``, and the table in ``<output_dir>/ablation.md`` and
``<output_dir>/ablation.json``.

``--use_dora`` makes the LoRA of the ``lora`` and ``hybrid`` rows DoRA (the other rows have no
LoRA to change); the settings record ``use_dora``.

Unlike the paper's code, no row gets different inputs: task tags are off for every mode unless
``use_task_tags`` is set (then on for every mode), so the prompt-only row does not also lose an
instruction that the other rows keep.

Example:
    >>> from peft_hybrid.training.recipe import parse_args
    >>> from peft_hybrid.training.ablation import run_ablation
    >>> from peft_hybrid.offline.synthetic import sentiment_sentences, write_sst2_tsv
    >>> rows = sentiment_sentences(8, seed=0)
    >>> train, dev = write_sst2_tsv("train.tsv", rows[:4]), write_sst2_tsv("dev.tsv", rows[4:])
    >>> script_args, hybrid_config, training_args = parse_args([
    ...     "--model_preset", "tiny", "--train_file", "train.tsv", "--validation_file", "dev.tsv",
    ...     "--output_dir", "runs/ablation", "--max_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true"],
    ...     task="sst2")
    >>> result = run_ablation(script_args, hybrid_config, training_args)  # the Trainer prints its logs
    {'eval_loss': ...}
    >>> print(result.markdown())  # doctest: +ELLIPSIS
    | mode | Accuracy | invalid_outputs | trainable params |
    |---|---:|---:|---:|
    | none | ... | 0 |
    | prompt | ... | 1,920 |
    | lora | ... | 6,144 |
    | hybrid | ... | 8,064 |
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_hybrid.config import MODES, HybridConfig
from peft_hybrid.modeling.serialization import atomic_write_bytes
from peft_hybrid.offline.presets import preset_id
from peft_hybrid.training.callbacks import plain_json

ABLATION_MODES = ("none", "prompt", "lora", "hybrid")
TABLE_NAME = "ablation.md"
JSON_NAME = "ablation.json"
# Trainer bookkeeping reported beside the metrics, not a property of the model's outputs.
_NOT_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time")
# Training-argument fields that define "the same budget", recorded with the table.
_BUDGET_FIELDS = (
    "max_steps",
    "num_train_epochs",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_steps",
    "lr_scheduler_type",
    "weight_decay",
    "seed",
    "max_source_length",
    "max_target_length",
    "eval_strategy",
    "early_stopping_patience",
    "metric_for_best_model",
)


@dataclass
class AblationRow:
    """One mode's outcome.

    Attributes:
        mode: the `HybridConfig` mode.
        trainable_params / total_params: parameter counts of the model that was evaluated.
        metrics: the task's metrics on the reported split (keys without the ``eval_``/``test_`` prefix).
        adapter_dir: where the mode's adapter was saved (loads with ``HybridModel.from_pretrained``).
        seconds: wall time of the mode (training + evaluation).
    """

    mode: str
    trainable_params: int
    total_params: int
    metrics: dict[str, float]
    adapter_dir: str
    seconds: float


@dataclass
class AblationResult:
    """The whole ablation: rows in run order, the shared settings and the reported split."""

    task: str
    split: str
    rows: list[AblationRow] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def row(self, mode: str) -> AblationRow:
        for row in self.rows:
            if row.mode == mode:
                return row
        raise KeyError(f"no row for mode {mode!r}; rows are {[r.mode for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "split": self.split,
            "settings": self.settings,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }

    def metric_keys(self) -> list[str]:
        """The task's card metrics first (in the task's order), then any other metric reported."""
        from peft_hybrid.tasks import get_task

        seen = [m.key for m in get_task(self.task).card_metrics]
        for row in self.rows:
            seen.extend(k for k in row.metrics if k not in seen)
        return [k for k in seen if any(k in r.metrics for r in self.rows)]

    def markdown(self) -> str:
        """A Table-2-style markdown table: one row per mode, the task's metrics and trainable parameters."""
        from peft_hybrid.tasks import get_task

        names = {m.key: m.name for m in get_task(self.task).card_metrics}
        keys = self.metric_keys()
        header = ["mode", *(names.get(k, k) for k in keys), "trainable params"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for row in self.rows:
            cells = [row.mode, *(_format_metric(row.metrics.get(k)) for k in keys), f"{row.trainable_params:,}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``ablation.md`` (settings + table) and ``ablation.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        settings = "\n".join(f"- {k}: `{v}`" for k, v in self.settings.items())
        text = (
            f"# Ablation on {self.task} ({self.split} split)\n\n{self.markdown()}\n"
            f"Settings shared by every row:\n\n{settings}\n"
        )
        paths = {"markdown": directory / TABLE_NAME, "json": directory / JSON_NAME}
        atomic_write_bytes(paths["markdown"], text.encode("utf-8"))
        atomic_write_bytes(
            paths["json"], (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")
        )
        return paths


def _format_metric(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _metrics_of(split_metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in split_metrics.items():
        name = key[len(prefix) + 1 :] if key.startswith(prefix + "_") else key
        if name not in _NOT_METRICS and isinstance(value, (int, float)):
            out[name] = float(value)
    return out


def ablation_modes(modes: Sequence[str] | None = None, include_full: bool = False) -> list[str]:
    """The modes to run, validated: ``none, prompt, lora, hybrid`` by default, ``full`` on request."""
    chosen = list(modes) if modes else list(ABLATION_MODES)
    unknown = [m for m in chosen if m not in MODES]
    if unknown:
        raise ValueError(f"modes {unknown} are not valid; choose from {', '.join(MODES)}.")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"modes {chosen} name a mode twice; list each mode once.")
    if include_full and "full" not in chosen:
        chosen.append("full")
    return chosen


def ablation_config(hybrid_config: HybridConfig, mode: str) -> HybridConfig:
    """``hybrid_config`` for one row: its mode, and ``use_dora`` kept for the rows with LoRA only.

    Example:
        >>> config = HybridConfig(use_dora=True)
        >>> [ablation_config(config, mode).use_dora for mode in ("prompt", "lora", "hybrid")]
        [False, True, True]
    """
    uses_lora = HybridConfig(mode=mode).uses_lora
    return dataclasses.replace(
        hybrid_config, mode=mode, base_model_shape=None, use_dora=hybrid_config.use_dora and uses_lora
    )


def run_ablation(
    script_args: Any,
    hybrid_config: HybridConfig,
    training_args: Any,
    *,
    modes: Sequence[str] | None = None,
    include_full: bool = False,
    command: str | None = None,
) -> AblationResult:
    """Run `peft_hybrid.training.recipe.main` once per mode with identical settings and tabulate the results.

    Args:
        script_args / hybrid_config / training_args: what `peft_hybrid.training.recipe.parse_args` returns;
            ``training_args.output_dir`` is the ablation folder, ``hybrid_config.mode`` is ignored.
        modes: the rows, in order (default ``none, prompt, lora, hybrid``).
        include_full: add a full fine-tuning row.
        command: the command line that started the run, recorded with the settings.

    Returns:
        The `AblationResult`, also saved as ``ablation.md``/``ablation.json`` in the output folder.
        Metrics are the test split's when test data was given (the model chosen on validation),
        otherwise the validation split's.
    """
    from peft_hybrid.training.recipe import main as run_recipe

    chosen = ablation_modes(modes, include_full)
    root = Path(training_args.output_dir)
    if script_args.use_task_tags is None:
        script_args = dataclasses.replace(script_args, use_task_tags=False)
    result = AblationResult(task=training_args.task, split="test" if script_args.test_file else "validation")
    result.settings = _settings(script_args, hybrid_config, training_args, command)
    for mode in chosen:
        config = ablation_config(hybrid_config, mode)
        args = dataclasses.replace(training_args, output_dir=str(root / mode))
        start = time.perf_counter()
        summary = run_recipe(script_args, config, args)
        split_metrics = summary.get("test") if result.split == "test" else summary.get("eval")
        if not split_metrics:
            raise ValueError(
                f"mode {mode!r} produced no {result.split} metrics; pass --validation_file "
                "(and --test_file to report on test)."
            )
        result.rows.append(
            AblationRow(
                mode=mode,
                trainable_params=int(summary["trainable_params"]),
                total_params=int(summary["total_params"]),
                metrics=_metrics_of(split_metrics, "test" if result.split == "test" else "eval"),
                adapter_dir=str(summary["adapter_dir"]),
                seconds=round(time.perf_counter() - start, 2),
            )
        )
        result.save(root)  # after every mode, so a long run that stops keeps its finished rows
    return result


def _settings(
    script_args: Any, hybrid_config: HybridConfig, training_args: Any, command: str | None
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "base_model": (
            preset_id(script_args.model_preset) if script_args.model_preset else script_args.model_name_or_path
        ),
        "train_file": script_args.train_file or script_args.dataset_id or "task's Hub dataset",
        "validation_file": script_args.validation_file,
        "test_file": script_args.test_file,
        "max_train_samples": script_args.max_train_samples,
        "max_eval_samples": script_args.max_eval_samples,
        "use_task_tags": script_args.use_task_tags,
    }
    settings.update({k: getattr(training_args, k) for k in _BUDGET_FIELDS if hasattr(training_args, k)})
    # Every row's settings but the mode, which is the row.
    settings.update({k: v for k, v in hybrid_config.adapter_settings().items() if k != "mode"})
    if command:
        settings["command"] = command
    return {k: plain_json(v) for k, v in settings.items() if v is not None}
