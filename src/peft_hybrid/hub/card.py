"""Model cards: the one place where a card's data is collected, rendered and written.

`CardData` gathers what a card says about an adapter (base model, mode, parameter counts, the
task and its metrics, hyperparameters, the loss curve, an optional ablation) from a
`HybridModel` and the trainer's `TrainingSummary`. `render_card` turns it into Markdown with
YAML metadata through huggingface_hub's ``ModelCard.from_template`` and the Jinja template
``hub/model_cards/adapter_card.md`` (package data); the metadata's ``model-index`` lists every
metric of the task, so the Hub shows the results and ``ModelCard.load(...).data.eval_results``
reads them back.
`write_card` writes ``README.md`` into a folder, with ``training_curve.png`` beside it.

Example:
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.hub.card import CardData, render_card
    >>> from peft_hybrid.offline import t5_from_preset
    >>> base, tokenizer = t5_from_preset("tiny")
    >>> model = HybridModel(base, HybridConfig(task="sst2"), tokenizer=tokenizer)
    >>> data = CardData.from_model(model, results={"accuracy": 91.5}, repo_id="me/tiny-sst2")
    >>> "value: 91.5" in render_card(data)
    True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from peft_hybrid.config import HybridConfig
from peft_hybrid.hub.card_tables import (
    ablation_table,
    evaluation,
    format_value,
    hyperparameter_rows,
    inference_settings,
    metric_rows,
    strip_prefix,
    task_of,
)
from peft_hybrid.modeling.parts import method_summary
from peft_hybrid.modeling.quantization import describe
from peft_hybrid.modeling.serialization import atomic_write_bytes

logger = logging.getLogger(__name__)

# Package data read through importlib.resources, so an installed wheel finds it as an editable checkout does.
TEMPLATE = resources.files("peft_hybrid.hub") / "model_cards" / "adapter_card.md"
CARD_NAME = "README.md"
CURVE_IMAGE = "training_curve.png"
# The file name `peft_hybrid.interpret.heatmap.add_heatmap_to_card` gives the attribution heatmap.
ATTRIBUTION_IMAGE = "attribution_heatmap.png"
LIBRARY_NAME = "peft-hybrid"
# The Hub files encoder-decoder generation under text-generation: it folded text2text-generation
# into it (its model search no longer lists the old tag), and transformers 5 removed that pipeline.
PIPELINE_TAG = "text-generation"
BASE_TAGS = ("peft-hybrid", "lora", "prompt-tuning")
PAPER = {
    "title": (
        "Enhancing Parameter Efficiency in Large Language Model Fine-tuning Through Hybrid Prompt Tuning and LoRA"
    ),
    "authors": ["Gonge Lehan", "Ravi Shwetha", "Kozhimadam Shahin Shah", "Jin Mingwei", "Ang Wee Onn"],
    "year": 2024,
}
# Distribution names; the card names each by its import name (dashes become underscores).
_FRAMEWORKS = ("peft-hybrid", "transformers", "peft", "torch", "datasets", "huggingface-hub")


@dataclass
class CardData:
    """Everything a model card reports about one adapter.

    Attributes:
        mode: the adapter's mode (``none``/``prompt``/``lora``/``hybrid``/``full``).
        base_model: the base model's Hub id or path (``None`` when unknown).
        trainable_params, total_params: parameter counts of the `HybridModel`.
        adapter: the adapter settings (r, alpha, target modules, prompt tokens, ...).
        task: registered task name, or ``None``.
        results: the reported metrics, keyed as the task's ``compute_metrics`` names them
            (``rouge1``, ``accuracy``, ...); the model-index holds those of the task's card metrics.
        hyperparameters: training settings for the hyperparameter table.
        training_curve: ``{"step", "loss", ...}`` points; drawn as ``training_curve.png``.
        ablation: optional rows ``{"mode": ..., "metrics": {...}}`` for an ablation table.
        repo_id: where the adapter lives on the Hub (used in the usage snippet).
        model_name: the model-index name (defaults to the repo name).
        license: SPDX id of the card's license.
        framework_versions: library -> version, filled from the installed packages.
        curve_image, attribution_image: image files beside the card, when they exist.
        dataset: where the reported metrics were measured when that is not the task's Hub
            dataset (``{"id", "name", "config", "split", "revision"}``, e.g. local files).
        inference: the saved inference settings (`HybridConfig.inference`) as label -> value.
        base_quantization: how the base was quantized in training (``HybridConfig.base_quantization``
            in words), ``None`` for a full-precision base.

    Example:
        >>> CardData(mode="hybrid", base_model="google/flan-t5-base").model_index_name
        'flan-t5-base-hybrid'
    """

    mode: str
    base_model: str | None = None
    trainable_params: int = 0
    total_params: int = 0
    adapter: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    results: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    training_curve: list[dict[str, Any]] = field(default_factory=list)
    ablation: list[dict[str, Any]] | None = None
    repo_id: str | None = None
    model_name: str | None = None
    license: str = "apache-2.0"
    framework_versions: dict[str, str] = field(default_factory=lambda: framework_versions())
    curve_image: str | None = None
    attribution_image: str | None = None
    dataset: dict[str, Any] | None = None
    inference: dict[str, Any] | None = None
    base_quantization: str | None = None

    @classmethod
    def from_model(
        cls,
        model: Any,
        summary: Any = None,
        *,
        results: Mapping[str, float] | None = None,
        evaluation_step: int | None = None,
        ablation: Sequence[Mapping[str, Any]] | None = None,
        repo_id: str | None = None,
        **overrides: Any,
    ) -> CardData:
        """Card data for a `HybridModel`, with a `TrainingSummary` (or its dict) when there was training.

        Args:
            model: the `HybridModel` the card describes.
            summary: the trainer's training summary; gives hyperparameters, curve and metrics.
            results: metrics to report instead of the summary's (keys with or without ``eval_``).
            evaluation_step: report the summary's evaluation at this step (e.g. the best
                checkpoint's); default the last evaluation.
            ablation: rows ``{"mode", "metrics"}`` from an ablation run.
            repo_id: the Hub repo id the card will live in.
            overrides: any other `CardData` field.
        """
        config = model.hybrid_config
        summary = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary or {})
        if results is None:
            results = evaluation(summary, evaluation_step)
        data = cls(
            mode=config.mode,
            base_model=config.base_model_name_or_path,
            trainable_params=model.num_parameters(trainable_only=True),
            total_params=model.num_parameters(),
            adapter=config.adapter_settings(),
            task=config.task or summary.get("task"),
            results=strip_prefix(results),
            hyperparameters={k: v for k, v in summary.get("hyperparameters", {}).items() if k != "adapter"},
            training_curve=list(summary.get("training_curve", [])),
            ablation=[dict(row) for row in ablation] if ablation else None,
            repo_id=repo_id,
            inference=inference_settings(config),
            base_quantization=describe(config.base_quantization) if config.base_quantization else None,
        )
        for key, value in overrides.items():
            if key not in cls.__dataclass_fields__:
                raise TypeError(f"CardData has no field {key!r}; fields: {sorted(cls.__dataclass_fields__)}.")
            setattr(data, key, value)
        return data

    @property
    def model_index_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.repo_id:
            return self.repo_id.split("/")[-1]
        base = (self.base_model or "t5").rstrip("/").split("/")[-1]
        return f"{base}-{self.mode}" + (f"-{self.task}" if self.task else "")

    @property
    def method_summary(self) -> str:
        """The card's method line, from the adapter's parts (`peft_hybrid.modeling.parts.method_summary`)."""
        settings = {k: v for k, v in self.adapter.items() if k in HybridConfig.__dataclass_fields__}
        return method_summary(HybridConfig(**{**settings, "mode": self.mode}))

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    def eval_results(self) -> list[EvalResult]:
        """One ``EvalResult`` per metric of the task that ``results`` holds (empty without a task)."""
        if self.task is None:
            return []
        meta = task_of(self.task).card_metadata
        dataset = {**meta["dataset"], **self.dataset} if self.dataset else meta["dataset"]
        return [
            EvalResult(
                task_type=meta["task_type"],
                dataset_type=dataset["id"],
                dataset_name=dataset["name"],
                dataset_config=dataset["config"],
                dataset_split=dataset["split"],
                dataset_revision=dataset["revision"],
                metric_type=metric_type,
                metric_name=name,
                metric_value=self.results[key],
            )
            for key, metric_type, name in meta["metrics"]
            if self.results.get(key) is not None
        ]

    def metadata(self) -> ModelCardData:
        """The card's YAML metadata (the Hub reads the model-index from it)."""
        tags = list(BASE_TAGS)
        if self.base_model and _is_hub_id(self.base_model):
            tags.append(f"base_model:adapter:{self.base_model}")
        datasets, metrics = None, None
        if self.task is not None:
            tags.append(self.task)
            meta = task_of(self.task).card_metadata
            # Only a Hub dataset belongs in `datasets`; local files are named in the model-index.
            datasets = [meta["dataset"]["id"]] if meta["dataset"]["id"] and not self.dataset else None
            metrics = sorted({metric_type for _, metric_type, _ in meta["metrics"]})
        eval_results = self.eval_results()
        return ModelCardData(
            base_model=self.base_model if self.base_model and _is_hub_id(self.base_model) else None,
            library_name=LIBRARY_NAME,
            license=self.license,
            tags=tags,
            datasets=datasets,
            metrics=metrics,
            pipeline_tag=PIPELINE_TAG,
            eval_results=eval_results or None,
            model_name=self.model_index_name if eval_results else None,
        )


def render_card(data: CardData) -> str:
    """The card as Markdown with YAML metadata, rendered from ``hub/model_cards/adapter_card.md``.

    Example: see the module docstring.
    """
    metrics = metric_rows(data)
    card = ModelCard.from_template(
        data.metadata(),
        template_str=TEMPLATE.read_text(encoding="utf-8"),
        data=data,
        title=f"{data.model_index_name}",
        method_summary=data.method_summary,
        metric_rows=metrics,
        hyperparameters=hyperparameter_rows(data),
        ablation=ablation_table(data),
        paper=PAPER,
        fmt=format_value,
        repo_id=data.repo_id,
        base_on_hub=bool(data.base_model) and _is_hub_id(data.base_model),
    )
    return str(card)


def write_card(directory: str | Path, card: CardData | str) -> Path:
    """Write ``README.md`` (and ``training_curve.png`` when there is a curve) into ``directory``.

    A heatmap already in the folder (``attribution_heatmap.png``) is shown in the card.
    Returns the README path.

    Example:
        >>> from peft_hybrid import HybridConfig, HybridModel
        >>> from peft_hybrid.offline import t5_from_preset
        >>> base, tokenizer = t5_from_preset("tiny")
        >>> model = HybridModel(base, HybridConfig(task="sst2"), tokenizer=tokenizer)
        >>> _ = model.save_pretrained("my-adapter")
        >>> data = CardData.from_model(model, training_curve=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
        >>> write_card("my-adapter", data).name, (Path("my-adapter") / CURVE_IMAGE).is_file()
        ('README.md', True)
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"directory={str(directory)!r} is not a folder; save the adapter there first.")
    if isinstance(card, CardData):
        if card.training_curve and plot_training_curve(card.training_curve, directory / CURVE_IMAGE) is not None:
            card.curve_image = CURVE_IMAGE
        if (directory / ATTRIBUTION_IMAGE).is_file():
            card.attribution_image = ATTRIBUTION_IMAGE
        card = render_card(card)
    path = directory / CARD_NAME
    atomic_write_bytes(path, card.encode("utf-8"))
    return path


def plot_training_curve(curve: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Draw the training loss against the step as a PNG; ``None`` (logged) without matplotlib.

    Example:
        >>> plot_training_curve([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], "curve.png")
        PosixPath('curve.png')
    """
    points = [(p["step"], p["loss"]) for p in curve if p.get("loss") is not None]
    if not points:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib is not installed (the 'interpret' extra): the card has no training-curve image.")
        return None
    # The object-oriented API on an Agg canvas leaves the caller's pyplot backend alone.
    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps, losses = zip(*points)
    axes.plot(steps, losses, marker="." if len(points) < 50 else None)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def framework_versions() -> dict[str, str]:
    """Installed versions of the libraries an adapter depends on (card name -> version)."""
    versions = {}
    for distribution in _FRAMEWORKS:
        name = distribution.replace("-", "_")
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _is_hub_id(name: str) -> bool:
    """``org/name`` that is not an existing local path (a local base cannot be linked)."""
    return name.count("/") == 1 and not Path(name).exists()
