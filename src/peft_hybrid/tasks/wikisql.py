"""WikiSQL text-to-SQL, scored with the official logical-form and execution semantics.

The model reads ``question | columns: h0 | h1 | ...`` and writes the Hugging Face
``human_readable`` SQL: ``SELECT {AGG} {column} FROM table WHERE {column} {op} {value} AND ...``
(whitespace collapsed, values unquoted in their original case). `parse_sql` inverts that string
using the table header, so predictions are scored as the official evaluator scores logical forms:
same ``sel``, same ``agg``, and the same SET of ``(column, operator, str(value).lower())``.

Without a tables file (the official ``*.tables.jsonl`` is not always at hand) the header is a
placeholder ``col0 .. colN`` (N = the largest column index any question of that table uses), as
the Hugging Face dataset writes ``human_readable`` when it has no columns. A warning says so:
inputs then carry no column names, and execution accuracy is not reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_hybrid.tasks._readers import is_int, is_scalar_value, read_jsonl, require_object, require_str
from peft_hybrid.tasks._wikisql_exec import AGG_OPS, COND_OPS
from peft_hybrid.tasks.base import (
    CardMetric,
    DataError,
    HubDataset,
    Task,
    check_lengths,
)
from peft_hybrid.tasks.wikisql_sql import (
    Query,
    as_query,
    collapse_whitespace,
    exact_match,
    execution_accuracy,
    logical_form_accuracy,
    parse_sql,
    to_human_readable,
)

logger = logging.getLogger(__name__)


class WikisqlTask(Task):
    """WikiSQL: ``source`` = question + header, ``target`` = human-readable SQL.

    Rows also carry ``question``, ``table_id``, ``header``, ``header_is_placeholder`` and ``sql``
    (Hugging Face form), and ``types``/``rows`` when the table contents are known.
    """

    def __init__(self) -> None:
        super().__init__(
            name="wikisql",
            # Parquet conversion of the former script dataset (same schema as the original
            # Hugging Face `wikisql`: question, table{header,types,rows,id,...}, sql{...}).
            hub_dataset=HubDataset(id="Salesforce/wikisql", revision="refs/convert/parquet", name="WikiSQL"),
            task_type="text-generation",
            task_tag="translate to SQL: ",
            generation_kwargs={"max_new_tokens": 96, "num_beams": 1},
            metric_for_best_model="logical_form_accuracy",
            greater_is_better=True,
            card_metrics=(
                CardMetric("logical_form_accuracy", "accuracy", "Logical-form accuracy"),
                CardMetric("execution_accuracy", "accuracy", "Execution accuracy"),
                CardMetric("exact_match", "exact_match", "Exact match"),
            ),
        )

    @staticmethod
    def make_source(question: str, header: Sequence[str]) -> str:
        """The untagged model input: the question followed by the table's column names."""
        return f"{collapse_whitespace(question)} | columns: " + " | ".join(collapse_whitespace(h) for h in header)

    def _read_file(self, path: Path, tables_file: Path | None) -> list[dict[str, Any]]:
        tables = _read_tables(tables_file) if tables_file is not None else None
        records = [
            (row, require_object(obj, ("question", "sql", "table_id"), file=path, row=row))
            for row, obj in read_jsonl(path)
        ]
        for row, rec in records:
            require_str(rec["table_id"], file=path, row=row, field="table_id", what="table_id")
        queries = [(row, rec, _checked_query(rec["sql"], path, row)) for row, rec in records]
        if tables is None:
            logger.warning(
                "%s: no tables file given; headers are placeholders col0..colN, inputs carry no "
                "column names and execution accuracy is not available. Pass tables_file=... "
                "(the matching *.tables.jsonl) for the real headers.",
                path,
            )
            widths: dict[str, int] = {}
            for _, rec, q in queries:
                used = max([q["sel"]] + [c for c, _, _ in q["conds"]]) + 1
                widths[rec["table_id"]] = max(widths.get(rec["table_id"], 0), used)
        rows = []
        for row, rec, q in queries:
            table = None
            if tables is not None:
                table = tables.get(rec["table_id"])
                if table is None:
                    raise DataError(
                        f"table {rec['table_id']!r} is not in {tables_file}; pass the tables file "
                        "that belongs to this split",
                        file=path,
                        row=row,
                        field="table_id",
                    )
                header = table["header"]
            else:
                header = [f"col{i}" for i in range(widths[rec["table_id"]])]
            for col in [q["sel"]] + [c for c, _, _ in q["conds"]]:
                if col >= len(header):
                    raise DataError(
                        f"column index {col} is beyond the {len(header)} columns of table "
                        f"{rec['table_id']!r} {header}; fix the query or pass the right tables file",
                        file=path,
                        row=row,
                        field="sql",
                    )
            rows.append(self._row(rec["question"], rec["table_id"], header, q, table, path, row))
        return rows

    def _from_hub_row(self, record: dict[str, Any], row: int, where: str) -> dict[str, Any]:
        table = dict(record["table"])
        return self._row(
            record["question"],
            table["id"],
            table["header"],
            as_query(record["sql"]),
            table,
            where,
            row,
        )

    def _row(
        self,
        question: Any,
        table_id: str,
        header: Sequence[str],
        query: Query,
        table: Mapping[str, Any] | None,
        file: Any,
        row: int,
    ) -> dict[str, Any]:
        if not isinstance(question, str) or not question.strip():
            raise DataError(
                f"the question is missing or empty (got {question!r})",
                file=file,
                row=row,
                field="question",
            )
        header = [str(h) for h in header]
        out: dict[str, Any] = {
            "question": question,
            "table_id": str(table_id),
            "header": header,
            "header_is_placeholder": table is None,
            "sql": {
                "sel": query["sel"],
                "agg": query["agg"],
                "conds": {
                    "column_index": [c for c, _, _ in query["conds"]],
                    "operator_index": [o for _, o, _ in query["conds"]],
                    "condition": [str(v) for _, _, v in query["conds"]],
                },
            },
            "source": self.make_source(question, header),
            "target": to_human_readable(query, header),
        }
        if table is not None:
            out["types"] = [str(t) for t in table.get("types") or ["text"] * len(header)]
            out["rows"] = [[str(v) for v in r] for r in table.get("rows", [])]
        return out

    def compute_metrics(self, predictions: Sequence[str], examples: Any) -> dict[str, float]:
        """``logical_form_accuracy``, ``exact_match`` (and ``execution_accuracy`` when the rows
        carry table contents), all × 100, plus the ``unparseable`` prediction count."""
        rows = check_lengths(predictions, examples)
        headers = [r["header"] for r in rows]
        golds = [r["sql"] for r in rows]
        metrics = {
            "logical_form_accuracy": logical_form_accuracy(predictions, golds, headers),
            "exact_match": exact_match(predictions, [r["target"] for r in rows]),
            "unparseable": float(sum(parse_sql(p, h) is None for p, h in zip(predictions, headers))),
        }
        if all(r.get("rows") is not None and not r.get("header_is_placeholder") for r in rows):
            tables = [
                {"id": r["table_id"], "header": r["header"], "types": r["types"], "rows": r["rows"]} for r in rows
            ]
            metrics["execution_accuracy"] = execution_accuracy(predictions, golds, tables)
        return metrics


def _checked_query(sql: Any, file: Path, row: int) -> Query:
    """Validate one original-format ``sql`` object; `DataError` names what is wrong."""
    if not isinstance(sql, dict) or not all(k in sql for k in ("sel", "agg", "conds")):
        raise DataError(
            f"expected an object with sel, agg and conds, got {sql!r}",
            file=file,
            row=row,
            field="sql",
        )

    def bad(what: str, fld: str) -> DataError:
        return DataError(what, file=file, row=row, field=fld)

    # A boolean is not an index: JSON true would otherwise read as column/operator 1.
    if not is_int(sql["sel"]) or sql["sel"] < 0:
        raise bad(f"sel must be a column index >= 0, got {sql['sel']!r}", "sql.sel")
    if not is_int(sql["agg"]) or not 0 <= sql["agg"] < len(AGG_OPS):
        raise bad(f"agg must be 0..{len(AGG_OPS) - 1} (index into {list(AGG_OPS)}), got {sql['agg']!r}", "sql.agg")
    if not isinstance(sql["conds"], list):
        raise bad(f"conds must be a list of [column, operator, value], got {sql['conds']!r}", "sql.conds")
    for cond in sql["conds"]:
        ok = isinstance(cond, list) and len(cond) == 3 and is_int(cond[0]) and is_int(cond[1])
        ok = ok and cond[0] >= 0 and 0 <= cond[1] < len(COND_OPS) and is_scalar_value(cond[2])
        if not ok:
            raise bad(
                f"condition {cond!r} must be [column index, operator 0..3, value (a string or a number)]",
                "sql.conds",
            )
    return as_query(sql)


def _read_tables(path: Path) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    for row, obj in read_jsonl(path):
        table = require_object(obj, ("id", "header", "rows"), file=path, row=row)
        require_str(table["id"], file=path, row=row, field="id", what="the table id")
        header = table["header"]
        if not isinstance(header, list) or not header or not all(isinstance(h, str) for h in header):
            raise DataError(
                f"header must be a non-empty list of column names (strings), got {header!r}",
                file=path,
                row=row,
                field="header",
            )
        types = table.get("types") or ["text"] * len(header)
        if not isinstance(types, list) or len(types) != len(header) or not all(t in ("text", "real") for t in types):
            raise DataError(
                f"types {types!r} must list 'text' or 'real' once per column ({len(header)} columns)",
                file=path,
                row=row,
                field="types",
            )
        if not isinstance(table["rows"], list):
            raise DataError(
                f"rows must be a list of table rows, got {table['rows']!r}", file=path, row=row, field="rows"
            )
        for i, cells in enumerate(table["rows"]):
            if not isinstance(cells, list) or len(cells) != len(header) or not all(map(is_scalar_value, cells)):
                raise DataError(
                    f"table row {i} must be a list of {len(header)} cells, each a string or a finite number "
                    f"(got {cells!r})",
                    file=path,
                    row=row,
                    field="rows",
                )
        tables[str(table["id"])] = {**table, "types": types}
    return tables
