"""The `Task` base class: one instance per benchmark, owning data loading, formatting and metrics.

A task turns raw benchmark records into rows with two model-facing columns,

- ``source``: the model input text *without* any task tag,
- ``target``: the reference output text,

plus whatever raw fields its metric needs (e.g. WikiSQL's ``sql`` and ``header``). The task tag
(e.g. ``"summarize: "``) is added later by `Task.format_input`, because only full fine-tuning uses
hand-written tags; the PEFT modes leave the instruction to the learned soft prompt.

Example:
    >>> from peft_hybrid.tasks import get_task
    >>> task = get_task("sst2")
    >>> task.format_input({"source": "a charming journey"}, use_task_tags=True)
    'sst2 sentence: a charming journey'
    >>> task.compute_metrics(["positive", "Negative "], [{"target": "positive"}, {"target": "positive"}])
    {'accuracy': 50.0, 'invalid_outputs': 0.0}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Malformed benchmark input: says which file, row and field, what is wrong and what to do.

    Attributes:
        file: the file being read (``None`` for data that came from the Hub or from memory).
        row: 1-based data row (CSV/TSV: record after the header; JSON Lines: line number;
            JSON array: position in the array), or ``None`` when the problem is the whole file.
        field: the column or JSON key at fault, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        self.reason = message
        where = []
        if self.file is not None:
            where.append(self.file)
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass(frozen=True)
class HubDataset:
    """Where a task's data lives on the Hugging Face Hub (parquet, loadable without scripts).

    Attributes:
        id: dataset repository id, e.g. ``"knkarthick/samsum"``.
        config: configuration name (``"sst2"`` in ``nyu-mll/glue``), or ``None``.
        revision: branch, tag or commit to pin; ``None`` means the default branch.
        splits: our split name (``train``/``validation``/``test``) -> the Hub's split name.
        name: human-readable dataset name for model cards.
    """

    id: str
    config: str | None = None
    revision: str | None = None
    splits: Mapping[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )
    name: str = ""


@dataclass(frozen=True)
class CardMetric:
    """One metric as the model-index of a model card names it."""

    key: str
    type: str
    name: str


@dataclass
class Task:
    """Base class for a benchmark task; subclasses fill the fields and the three hooks.

    Subclass hooks:
        `_read_file(path, tables_file)` -> rows from a local file in the original format;
        `_from_hub_row(record, row)` -> one normalised row from a Hub record;
        `compute_metrics(predictions, examples)`.

    Attributes:
        name: registry name, e.g. ``"samsum"``.
        hub_dataset: Hub location used when `load` gets no ``data_file``.
        task_type: model-card task type ("summarization", "text-generation", ...).
        task_tag: hand-written tag prepended by `format_input` when task tags are used.
        generation_kwargs: keyword arguments for ``model.generate`` on this task.
        metric_for_best_model: key of `compute_metrics` used to select checkpoints.
        greater_is_better: whether a larger ``metric_for_best_model`` is better.
        card_metrics: metrics reported in the model card's model-index.
        eval_split: split used for model selection and reporting.
    """

    name: str = ""
    hub_dataset: HubDataset = field(default_factory=lambda: HubDataset(id=""))
    task_type: str = "text-generation"
    task_tag: str = ""
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    metric_for_best_model: str = ""
    greater_is_better: bool = True
    card_metrics: tuple[CardMetric, ...] = ()
    eval_split: str = "validation"

    # ------------------------------------------------------------------ loading
    def load(
        self,
        split: str | None = None,
        *,
        data_file: str | Path | None = None,
        tables_file: str | Path | None = None,
        dataset_id: str | None = None,
        revision: str | None = None,
    ) -> datasets.Dataset:
        """Load one split as a normalised `datasets.Dataset` (``source``, ``target`` + raw fields).

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``; defaults to `eval_split`.
                Ignored for local files (a file is one split).
            data_file: a local file in the benchmark's original format; when given, the Hub is
                not contacted.
            tables_file: WikiSQL only: the ``*.tables.jsonl`` file belonging to ``data_file``.
            dataset_id: Hub dataset id overriding ``hub_dataset.id`` (a mirror).
            revision: Hub revision overriding ``hub_dataset.revision``.

        Raises:
            DataError: the file is missing, empty or malformed (names file, row and field).
        """
        if data_file is not None:
            from peft_hybrid.tasks._readers import require_regular_file

            path = require_regular_file(data_file)
            tables = require_regular_file(tables_file, "tables file") if tables_file is not None else None
            rows = self._read_file(path, tables)
            source: str | Path = path
        else:
            if tables_file is not None:
                raise ValueError("tables_file only applies together with data_file")
            rows, source = self._load_hub(split or self.eval_split, dataset_id, revision)
        if not rows:
            raise DataError("the dataset has no examples; check that the file holds data rows", file=source)
        return datasets.Dataset.from_list(rows)

    def _load_hub(self, split: str, dataset_id: str | None, revision: str | None) -> tuple[list[dict[str, Any]], str]:
        hub = self.hub_dataset
        if split not in hub.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; choose one of {sorted(hub.splits)}")
        repo = dataset_id or hub.id
        ds = datasets.load_dataset(repo, hub.config, split=hub.splits[split], revision=revision or hub.revision)
        where = f"{repo}[{hub.splits[split]}]"
        return [self._from_hub_row(dict(rec), i + 1, where) for i, rec in enumerate(ds)], where

    def _read_file(self, path: Path, tables_file: Path | None) -> list[dict[str, Any]]:
        raise NotImplementedError(f"task {self.name!r} cannot read local files")

    def _from_hub_row(self, record: dict[str, Any], row: int, where: str) -> dict[str, Any]:
        raise NotImplementedError(f"task {self.name!r} cannot read Hub records")

    # --------------------------------------------------------------- formatting
    def format_input(self, example: Mapping[str, Any], use_task_tags: bool, task_prefix: str | None = None) -> str:
        """The model input text for one normalised example.

        Args:
            example: a row with a ``source`` column.
            use_task_tags: prepend the hand-written `task_tag` (full fine-tuning); PEFT modes
                pass ``False``.
            task_prefix: explicit prefix that replaces the choice above in both modes
                (``""`` for none).
        """
        if task_prefix is not None:
            prefix = task_prefix
        else:
            prefix = self.task_tag if use_task_tags else ""
        return prefix + example["source"]

    def format_dataset(
        self, dataset: datasets.Dataset, use_task_tags: bool, task_prefix: str | None = None
    ) -> datasets.Dataset:
        """Add the ``input_text`` column (`format_input` of every row) that tokenization reads."""
        return dataset.map(
            lambda ex: {"input_text": self.format_input(ex, use_task_tags, task_prefix)},
            desc=f"{self.name}: formatting inputs",
        )

    # ------------------------------------------------------------------ metrics
    def compute_metrics(
        self, predictions: Sequence[str], examples: datasets.Dataset | Sequence[Mapping[str, Any]]
    ) -> dict[str, float]:
        """Corpus-level metrics of decoded ``predictions`` against normalised ``examples``."""
        raise NotImplementedError

    @property
    def card_metadata(self) -> dict[str, Any]:
        """What the model card's model-index needs: dataset, task type and metrics."""
        hub = self.hub_dataset
        return {
            "dataset": {
                "id": hub.id,
                "name": hub.name or self.name,
                "config": hub.config,
                "split": hub.splits.get(self.eval_split, self.eval_split),
                "revision": hub.revision,
            },
            "task_type": self.task_type,
            "metrics": [(m.key, m.type, m.name) for m in self.card_metrics],
        }


def check_same_length(predictions: Sequence[Any], *others: Sequence[Any]) -> None:
    """Raise ValueError unless there is at least one prediction and one entry per prediction in
    each of ``others`` (references, gold queries, headers, ...)."""
    sizes = [len(o) for o in others]
    if any(n != len(predictions) for n in sizes):
        raise ValueError(
            f"got {len(predictions)} predictions for {' / '.join(map(str, sizes))} references; "
            "pass one prediction per reference, in the same order"
        )
    if not predictions:
        raise ValueError("no predictions to score; pass at least one prediction/reference pair")


def check_lengths(predictions: Sequence[str], examples: Iterable[Any]) -> list[Mapping[str, Any]]:
    """Materialise ``examples`` as a list and check it pairs one-to-one with ``predictions``."""
    rows = list(examples)
    check_same_length(predictions, rows)
    return rows


def require_text(value: Any, *, file: Any, row: int, field_name: str, what: str) -> str:
    """Return ``value`` as a non-blank string, or raise `DataError` saying what to fix."""
    if value is not None and not isinstance(value, str):
        raise DataError(
            f"{what} must be text, got {value!r} ({type(value).__name__}); quote it in the file",
            file=file,
            row=row,
            field=field_name,
        )
    if value is None:
        raise DataError(
            f"{what} is missing (got {value!r}); every row needs a non-empty {field_name}",
            file=file,
            row=row,
            field=field_name,
        )
    if not value.strip():
        raise DataError(
            f"{what} is empty; remove the row or fill in its {field_name}",
            file=file,
            row=row,
            field=field_name,
        )
    return value
