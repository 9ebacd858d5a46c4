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

Example:
    >>> header = ["Player", "No.", "School/Club Team"]
    >>> query = {"sel": 0, "agg": 3, "conds": [[2, 0, "Butler CC (KS)"]]}
    >>> to_human_readable(query, header)
    'SELECT COUNT Player FROM table WHERE School/Club Team = Butler CC (KS)'
    >>> parse_sql(to_human_readable(query, header), header) == query
    True
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_hybrid.tasks._readers import is_int, is_scalar_value, read_jsonl, require_object, require_str
from peft_hybrid.tasks._wikisql_exec import AGG_OPS, COND_OPS, TableDatabase
from peft_hybrid.tasks.base import (
    CardMetric,
    DataError,
    HubDataset,
    Task,
    check_lengths,
    check_same_length,
)

logger = logging.getLogger(__name__)

Query = dict[str, Any]  # {"sel": int, "agg": int, "conds": [[col, op, value], ...]}


def _collapse(text: Any) -> str:
    return " ".join(str(text).split())


def as_query(sql: Mapping[str, Any]) -> Query:
    """Normalise a WikiSQL ``sql`` record to ``{"sel", "agg", "conds": [[col, op, value], ...]}``.

    Accepts the original JSONL form (``conds`` a list of triples) and the Hugging Face form
    (``conds`` a dict of ``column_index``/``operator_index``/``condition`` lists).
    """
    conds = sql["conds"]
    if isinstance(conds, Mapping):
        conds = zip(conds["column_index"], conds["operator_index"], conds["condition"])
    return {
        "sel": int(sql["sel"]),
        "agg": int(sql["agg"]),
        "conds": [[int(c), int(o), v] for c, o, v in conds],
    }


def to_human_readable(query: Mapping[str, Any], header: Sequence[str]) -> str:
    """The Hugging Face ``human_readable`` string of a structured query on a table header."""
    q = as_query(query)
    for col in [q["sel"]] + [c for c, _, _ in q["conds"]]:
        if not 0 <= col < len(header):
            raise ValueError(f"column index {col} is outside the header of {len(header)} columns {list(header)}")
    text = f"SELECT {AGG_OPS[q['agg']]} {header[q['sel']]} FROM table"
    if q["conds"]:
        text += " WHERE " + " AND ".join(f"{header[c]} {COND_OPS[o]} {v}" for c, o, v in q["conds"])
    return _collapse(text)


def _match_columns(text: str, pos: int, names: Sequence[str]) -> Iterator[tuple[int, int]]:
    """Yield ``(column index, end position)`` for header names found at ``text[pos:]``.

    Longest names first (so "Score = goals" wins over "Score"), exact case before a
    case-insensitive match; duplicate names resolve to their first column.
    """
    seen: set[str] = set()
    order = sorted(range(len(names)), key=lambda i: (-len(names[i]), i))
    for exact in (True, False):
        for i in order:
            name = names[i]
            if not name or name in seen:
                continue
            end = pos + len(name)
            piece = text[pos:end]
            if (piece == name) if exact else (piece.lower() == name.lower() and piece != name):
                if end == len(text) or text[end] == " ":
                    seen.add(name)
                    yield i, end


def _parse_conds(text: str, names: Sequence[str]) -> list[list[Any]] | None:
    """Parse ``col op value AND col op value ...``; each value (never empty) ends at the first
    " AND " after which the rest parses as conditions (values may contain spaces, operators and
    AND)."""

    @functools.cache
    def parse_from(pos: int) -> tuple[tuple[int, int, str], ...] | None:
        for col, end in _match_columns(text, pos, names):
            for op_index, op in enumerate(COND_OPS):
                token = " " + op
                start = end + len(token)
                if not text.startswith(token, end) or (start < len(text) and text[start] != " "):
                    continue
                cut = text.find(" AND ", start + 1)
                while cut != -1:
                    rest = parse_from(cut + 5)
                    if rest is not None:
                        return ((col, op_index, text[start:cut].strip()),) + rest
                    cut = text.find(" AND ", cut + 1)
                if text[start:].strip():
                    return ((col, op_index, text[start:].strip()),)
        return None

    parsed = parse_from(0)
    return None if parsed is None else [list(c) for c in parsed]


def parse_sql(text: str, header: Sequence[str]) -> Query | None:
    """Invert `to_human_readable`: the structured query, or ``None`` if ``text`` does not parse.

    Keywords (SELECT, the aggregation, FROM table, WHERE, AND) must be upper-case as in the
    target; column names are matched against ``header`` (whitespace collapsed, exact case
    preferred). Values come back as strings.
    """
    s = _collapse(text)
    names = [_collapse(h) for h in header]
    if not s.startswith("SELECT "):
        return None
    body = len("SELECT ")
    starts = [(0, body)] + [(i, body + len(a) + 1) for i, a in enumerate(AGG_OPS) if a and s.startswith(a + " ", body)]
    for agg, pos in starts:
        for sel, end in _match_columns(s, pos, names):
            rest = s[end:]
            if rest == " FROM table":
                return {"sel": sel, "agg": agg, "conds": []}
            if rest.startswith(" FROM table WHERE "):
                conds = _parse_conds(rest[len(" FROM table WHERE ") :], names)
                if conds is not None:
                    return {"sel": sel, "agg": agg, "conds": conds}
    return None


def logical_form_key(query: Mapping[str, Any]) -> tuple[int, int, frozenset]:
    """What the official evaluator compares: sel, agg and the set of (col, op, str(value).lower())."""
    q = as_query(query)
    return q["sel"], q["agg"], frozenset((c, o, str(v).lower()) for c, o, v in q["conds"])


def logical_form_accuracy(
    pred_texts: Sequence[str],
    gold_queries: Sequence[Mapping[str, Any]],
    headers: Sequence[Sequence[str]],
) -> float:
    """Official logical-form accuracy × 100; an unparseable prediction counts as wrong."""
    check_same_length(pred_texts, gold_queries, headers)
    correct = 0
    for text, gold, header in zip(pred_texts, gold_queries, headers):
        pred = parse_sql(text, header)
        correct += pred is not None and logical_form_key(pred) == logical_form_key(gold)
    return 100.0 * correct / len(pred_texts)


def exact_match(pred_texts: Sequence[str], gold_texts: Sequence[str]) -> float:
    """Exact string match × 100 after collapsing whitespace (case and condition order count)."""
    check_same_length(pred_texts, gold_texts)
    correct = sum(_collapse(p) == _collapse(g) for p, g in zip(pred_texts, gold_texts))
    return 100.0 * correct / len(pred_texts)


def execution_accuracy(
    pred_texts: Sequence[str],
    gold_queries: Sequence[Mapping[str, Any]],
    tables: Sequence[Mapping[str, Any]],
) -> float:
    """Official execution accuracy × 100: both queries run on the table, result lists compared.

    Each ``tables`` entry has ``id`` (the table id), ``header``, ``types`` and ``rows``.
    """
    check_same_length(pred_texts, gold_queries, tables)
    db = TableDatabase()
    correct = 0
    for text, gold, table in zip(pred_texts, gold_queries, tables):
        db.add_table(table["id"], table["types"], table["rows"])
        pred = parse_sql(text, table["header"])
        if pred is None:
            continue
        expected = db.execute(table["id"], as_query(gold))
        correct += expected is not None and db.execute(table["id"], pred) == expected
    return 100.0 * correct / len(pred_texts)


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
        return f"{_collapse(question)} | columns: " + " | ".join(_collapse(h) for h in header)

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
