"""Readers for benchmark files in their original formats, with exact row numbers in errors.

Python's csv/json modules are used instead of ``datasets.load_dataset("csv"|"json")`` because
they let every error name the record or line at fault.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from peft_hybrid.tasks.base import DataError


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading BOM is dropped); non-UTF-8 bytes raise `DataError`."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"byte 0x{data[err.start]:02x} at byte offset {err.start} (line {line}) is not valid "
            "UTF-8; re-encode the file as UTF-8",
            file=path,
            row=_record_number(path, data[: err.start]),
        ) from None


def _record_number(path: Path, prefix: bytes) -> int:
    """The 1-based data record that contains the end of ``prefix`` (line number for JSON Lines)."""
    text = prefix.decode("utf-8", errors="replace")
    if path.suffix.lower() in {".csv", ".tsv"}:
        try:
            records = sum(1 for _ in csv.reader(io.StringIO(text, newline="")))
        except csv.Error:
            records = text.count("\n") + 1
        return max(records - 1, 1)  # the header is record 0
    return text.count("\n") + 1


def read_delimited(
    path: Path, required: Sequence[str], *, delimiter: str = ",", quoted: bool = True
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(row, record)`` for each data record of a CSV/TSV file with a header line.

    Args:
        path: the file.
        required: columns that must be in the header.
        delimiter: ``","`` or ``"\\t"``.
        quoted: RFC 4180 quoting (CSV); ``False`` reads every field literally (GLUE TSV, whose
            sentences contain bare quote characters).
    """
    text = read_text(path)
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=quoted)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the file is empty; it needs a header line and data rows", file=path) from None
    except csv.Error as err:
        raise DataError(f"the header line cannot be parsed ({err})", file=path, row=0) from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        sep = "<TAB>" if delimiter == "\t" else delimiter
        raise DataError(
            f"the header {header} lacks column(s) {missing}; the header line must be {sep.join(required)}",
            file=path,
            row=0,
            field=missing[0],
        )
    row = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(
                f"broken quoting near line {reader.line_num} ({err}); quote fields that contain "
                'the delimiter or line breaks and double any " inside them',
                file=path,
                row=row + 1,
            ) from None
        row += 1
        if not values:  # a blank line
            continue
        if len(values) != len(header):
            raise DataError(
                f"expected {len(header)} fields ({', '.join(header)}) but found {len(values)} "
                f"near line {reader.line_num}; check the delimiters and quoting of this row",
                file=path,
                row=row,
                field=header[min(len(values), len(header) - 1)],
            )
        yield row, dict(zip(header, values))


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSON Lines file."""
    text = read_text(path)
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"line {line_no} is not valid JSON ({err.msg} at column {err.colno}); each line "
                "must hold exactly one JSON object",
                file=path,
                row=line_no,
            ) from None


def read_json_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(position, object)`` from a JSON array file (1-based), or from JSON Lines."""
    if path.suffix.lower() == ".jsonl":
        yield from read_jsonl(path)
        return
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); the file must "
            "be a JSON array of objects (or use .jsonl for one object per line)",
            file=path,
            row=err.lineno,
        ) from None
    if not isinstance(data, list):
        raise DataError(f"expected a JSON array of objects, found {type(data).__name__}", file=path)
    yield from enumerate(data, start=1)


def require_object(obj: Any, keys: Sequence[str], *, file: Path, row: int) -> dict[str, Any]:
    """Check that ``obj`` is a JSON object holding ``keys``; raise `DataError` naming the first gap."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, found {type(obj).__name__}", file=file, row=row)
    for key in keys:
        if key not in obj:
            raise DataError(
                f"the key {key!r} is missing; every record needs {list(keys)}",
                file=file,
                row=row,
                field=key,
            )
    return obj
