"""GLUE SST-2 binary sentiment as text generation: the model writes "negative" or "positive".

Reported on the GLUE validation split (872 sentences): the GLUE test split has no labels (all
-1), so it cannot be scored and loading it raises `DataError`.

Example:
    >>> from peft_hybrid.tasks.sst2 import accuracy
    >>> accuracy(["Positive", "maybe"], ["positive", "negative"])
    {'accuracy': 50.0, 'invalid_outputs': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft_hybrid.tasks._readers import read_delimited
from peft_hybrid.tasks.base import (
    CardMetric,
    DataError,
    HubDataset,
    Task,
    check_lengths,
    check_same_length,
)

LABEL_WORDS = ("negative", "positive")  # index = GLUE label


def _normalise_prediction(text: str) -> str:
    return " ".join(text.split()).lower()


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Accuracy × 100 and the number of outputs that are neither label word.

    Predictions are compared after lower-casing and collapsing whitespace; an output that is
    not exactly a label word (e.g. "very positive") counts as wrong and as invalid.
    """
    check_same_length(predictions, references)
    correct = invalid = 0
    for pred, ref in zip(predictions, references):
        word = _normalise_prediction(pred)
        if word not in LABEL_WORDS:
            invalid += 1
        elif word == ref:
            correct += 1
    return {"accuracy": 100.0 * correct / len(predictions), "invalid_outputs": float(invalid)}


def _label_word(value: Any, *, file: Any, row: int) -> tuple[int, str]:
    """Map a GLUE label (0/1, as int or text) to ``(label, word)``; anything else is a DataError."""
    label: int | None = None
    if isinstance(value, bool):
        label = None
    elif isinstance(value, int):
        label = value
    elif isinstance(value, str) and value.strip() in {"0", "1"}:
        label = int(value.strip())
    if label not in (0, 1):
        hint = (
            "; the GLUE test split has no labels (-1): evaluate on the validation split" if value in (-1, "-1") else ""
        )
        raise DataError(
            f"label {value!r} is not 0 (negative) or 1 (positive){hint}",
            file=file,
            row=row,
            field="label",
        )
    return label, LABEL_WORDS[label]


class Sst2Task(Task):
    """SST-2: ``source`` is the sentence, ``target`` the label word, ``label`` the GLUE label."""

    def __init__(self) -> None:
        super().__init__(
            name="sst2",
            hub_dataset=HubDataset(
                id="nyu-mll/glue",
                config="sst2",
                name="GLUE SST-2",
                # The GLUE test labels are hidden: there is nothing to score on it.
                splits={"train": "train", "validation": "validation"},
            ),
            task_type="text-classification",
            task_tag="sst2 sentence: ",
            generation_kwargs={"max_new_tokens": 3, "num_beams": 1},
            metric_for_best_model="accuracy",
            greater_is_better=True,
            card_metrics=(CardMetric("accuracy", "accuracy", "Accuracy"),),
        )

    def _read_file(self, path: Path, tables_file: Path | None) -> list[dict[str, Any]]:
        if tables_file is not None:
            raise ValueError("SST-2 has no tables file; omit tables_file")
        if path.suffix.lower() != ".tsv":
            raise DataError(
                "unsupported file type; SST-2 files are GLUE .tsv with header sentence<TAB>label",
                file=path,
            )
        records = read_delimited(path, ("sentence", "label"), delimiter="\t", quoted=False)
        return [self._normalise(rec, row, path) for row, rec in records]

    def _from_hub_row(self, record: dict[str, Any], row: int, where: str) -> dict[str, Any]:
        return self._normalise(record, row, where)

    @staticmethod
    def _normalise(record: dict[str, Any], row: int, file: Any) -> dict[str, Any]:
        sentence = record.get("sentence")
        if not isinstance(sentence, str) or not sentence.strip():
            raise DataError(
                f"the sentence is missing or empty (got {sentence!r}); every row needs text",
                file=file,
                row=row,
                field="sentence",
            )
        label, word = _label_word(record.get("label"), file=file, row=row)
        return {"source": sentence.strip(), "target": word, "label": label}

    def compute_metrics(self, predictions: Sequence[str], examples: Any) -> dict[str, float]:
        """Accuracy × 100 and ``invalid_outputs`` against the examples' ``target`` words."""
        rows = check_lengths(predictions, examples)
        return accuracy(predictions, [r["target"] for r in rows])
