"""WikiSQL's SQL: the Hugging Face ``human_readable`` form, its parser, and the official metrics.

The logical form is correct iff ``sel`` and ``agg`` are equal and the conditions are the same SET of
``(column, operator, str(value).lower())``; execution accuracy runs both queries on the table.

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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from peft_hybrid.tasks._wikisql_exec import AGG_OPS, COND_OPS, TableDatabase
from peft_hybrid.tasks.base import check_same_length

Query = dict[str, Any]  # {"sel": int, "agg": int, "conds": [[col, op, value], ...]}


def collapse_whitespace(text: Any) -> str:
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
    return collapse_whitespace(text)


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
    s = collapse_whitespace(text)
    names = [collapse_whitespace(h) for h in header]
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
    correct = sum(collapse_whitespace(p) == collapse_whitespace(g) for p, g in zip(pred_texts, gold_texts))
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
