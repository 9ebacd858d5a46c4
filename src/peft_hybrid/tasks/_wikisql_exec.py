"""Execution of WikiSQL logical forms on in-memory SQLite tables, as the official evaluator does.

Each WikiSQL table becomes one SQLite table with columns ``col0..colN``: ``real`` columns hold
numbers, all other cells are lower-cased text. A query runs as
``SELECT {agg}(col{sel}) AS result FROM t WHERE col{c} {op} ? AND ...``; string values are
lower-cased, and values compared with a ``real`` column are parsed as numbers (thousands
separators allowed; otherwise the first number in the text). A query that cannot run (column out
of range, operator ``OP``, a value with no number for a ``real`` column) has no result and so
never matches.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

AGG_OPS = ("", "MAX", "MIN", "COUNT", "SUM", "AVG")
COND_OPS = ("=", ">", "<", "OP")
_FIRST_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


def _to_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text.replace(",", ""))
    except ValueError:
        found = _FIRST_NUMBER.findall(text)
        return float(found[0]) if found else None


class TableDatabase:
    """Lazily builds one SQLite table per WikiSQL table and executes structured queries on it."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:")
        self._names: dict[str, str] = {}
        self._types: dict[str, list[str]] = {}

    def add_table(self, table_id: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Create the table once (later calls with the same id are ignored)."""
        if table_id in self._names:
            return
        name = f"t{len(self._names)}"
        kinds = ["real" if t == "real" else "text" for t in types]
        columns = ", ".join(f"col{i} {k.upper()}" for i, k in enumerate(kinds))
        self._conn.execute(f"CREATE TABLE {name} ({columns})")
        cells = [[_to_number(v) if k == "real" else str(v).lower() for k, v in zip(kinds, row)] for row in rows]
        marks = ", ".join("?" * len(kinds))
        self._conn.executemany(f"INSERT INTO {name} VALUES ({marks})", cells)
        self._names[table_id] = name
        self._types[table_id] = kinds

    def execute(self, table_id: str, query: Mapping[str, Any]) -> list[Any] | None:
        """Result list of ``query`` ({"sel","agg","conds"}) on the table; ``None`` if it cannot run."""
        kinds = self._types[table_id]
        sel, agg = query["sel"], query["agg"]
        if not (0 <= sel < len(kinds) and 0 <= agg < len(AGG_OPS)):
            return None
        select = f"col{sel}"
        if AGG_OPS[agg]:
            select = f"{AGG_OPS[agg]}({select})"
        clauses, params = [], []
        for col, op, value in query["conds"]:
            if not (0 <= col < len(kinds)) or COND_OPS[op] == "OP":
                return None
            if kinds[col] == "real" and not isinstance(value, (int, float)):
                value = _to_number(value)
                if value is None:
                    return None
            elif isinstance(value, str):
                value = value.lower()
            clauses.append(f"col{col} {COND_OPS[op]} ?")
            params.append(value)
        sql = f"SELECT {select} AS result FROM {self._names[table_id]}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        try:
            return [row[0] for row in self._conn.execute(sql, params).fetchall()]
        except sqlite3.Error:
            return None
