"""SAMSum dialogue summarization, scored with corpus-level ROUGE.

ROUGE settings: ``rouge_score.rouge_scorer.RougeScorer`` with ``use_stemmer=True`` and the
default tokenizer; each score is the F-measure, averaged over all examples (not per batch) and
multiplied by 100. ``rougeLsum`` puts one sentence per line, split by `split_sentences` (a
regular expression: no tokenizer download), so it differs from ``rougeL`` on multi-sentence
summaries.

Example:
    >>> from peft_hybrid.tasks.samsum import rouge
    >>> rouge(["the cat sat"], ["the cat sat"])["rouge1"]
    100.0
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

from peft_hybrid.tasks._readers import is_int, read_delimited, read_json_records, require_object
from peft_hybrid.tasks.base import (
    CardMetric,
    DataError,
    HubDataset,
    Task,
    check_lengths,
    check_same_length,
    require_text,
)

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at ., ! or ? (optionally followed by one closing quote or bracket) before
# whitespace.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences: at line breaks and after ``.``/``!``/``?`` plus whitespace.

    >>> split_sentences("Tom is late. He'll call!\\nBye")
    ['Tom is late.', "He'll call!", 'Bye']
    """
    sentences: list[str] = []
    for line in text.splitlines():
        sentences.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return sentences


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus ROUGE-1/2/L/Lsum: mean per-example F-measure × 100 (see the module docstring)."""
    check_same_length(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(predictions) for key, total in totals.items()}


class SamsumTask(Task):
    """SAMSum: ``source`` is the dialogue (turns joined by ``\\n``), ``target`` the summary.

    Local files: the CSV export (header ``id,summary,dialogue``, turns separated by ``\\r\\n``
    inside quoted fields) or the original corpus JSON (an array of objects with the same keys).
    """

    def __init__(self) -> None:
        super().__init__(
            name="samsum",
            hub_dataset=HubDataset(id="knkarthick/samsum", name="SAMSum"),
            task_type="summarization",
            task_tag="summarize: ",
            generation_kwargs={"max_new_tokens": 128, "num_beams": 1},
            metric_for_best_model="rougeL",
            greater_is_better=True,
            card_metrics=(
                CardMetric("rouge1", "rouge", "ROUGE-1"),
                CardMetric("rouge2", "rouge", "ROUGE-2"),
                CardMetric("rougeL", "rouge", "ROUGE-L"),
                CardMetric("rougeLsum", "rouge", "ROUGE-Lsum"),
            ),
        )

    def _read_file(self, path: Path, tables_file: Path | None) -> list[dict[str, Any]]:
        if tables_file is not None:
            raise ValueError("SAMSum has no tables file; omit tables_file")
        fields = ("id", "summary", "dialogue")
        if path.suffix.lower() in {".json", ".jsonl"}:
            records = ((row, require_object(obj, fields, file=path, row=row)) for row, obj in read_json_records(path))
        elif path.suffix.lower() == ".csv":
            records = read_delimited(path, fields)
        else:
            raise DataError(
                "unsupported file type; SAMSum files are .csv (id,summary,dialogue) or .json",
                file=path,
            )
        return [self._normalise(rec, row, path) for row, rec in records]

    def _from_hub_row(self, record: dict[str, Any], row: int, where: str) -> dict[str, Any]:
        return self._normalise(record, row, where)

    @staticmethod
    def _normalise(record: Mapping[str, Any], row: int, file: Any) -> dict[str, Any]:
        dialogue = require_text(record.get("dialogue"), file=file, row=row, field_name="dialogue", what="the dialogue")
        summary = require_text(record.get("summary"), file=file, row=row, field_name="summary", what="the summary")
        # The corpus separates turns with \r\n; the model sees plain \n.
        ident = record.get("id", row)
        if not (isinstance(ident, str) or is_int(ident)):
            raise DataError(f"the id must be a string or an integer, got {ident!r}", file=file, row=row, field="id")
        turns = [t.strip() for t in dialogue.replace("\r\n", "\n").split("\n")]
        return {
            "id": str(ident),
            "source": "\n".join(t for t in turns if t),
            "target": summary.strip(),
        }

    def compute_metrics(self, predictions: Sequence[str], examples: Any) -> dict[str, float]:
        """ROUGE-1/2/L/Lsum × 100 of ``predictions`` against the examples' ``target``."""
        rows = check_lengths(predictions, examples)
        return rouge(predictions, [r["target"] for r in rows])
