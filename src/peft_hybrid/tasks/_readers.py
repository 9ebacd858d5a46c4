"""Readers for benchmark files in their original formats, with exact row numbers in errors.

Python's csv/json modules are used instead of ``datasets.load_dataset("csv"|"json")`` because
they let every error name the record or line at fault. Everything read is checked first for
what it really is (a regular file, not compressed, UTF-8), and JSON's ``NaN``/``Infinity``
extensions are refused: a value that is not a number cannot stand in for one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from peft_hybrid.tasks.base import DataError

# Leading bytes of the compressed formats a downloaded benchmark file often comes in.
_COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip", "gunzip"),
    (b"BZh", "bzip2", "bunzip2"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
    (b"PK\x03\x04", "zip", "unzip"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
)
# csv's C parser stores the limit in a C long: sys.maxsize overflows it where a long is 32 bits.
_CSV_FIELD_LIMIT_CAP = min(sys.maxsize, 2**31 - 1)


def require_regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a `Path` when it names a regular file (or a link to one); else `DataError`.

    A folder, FIFO, socket or device is "not a regular file", never "not found", and the check
    only stats the path, so a FIFO is not opened (opening one blocks until a writer appears).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{what} not found; pass the path of an existing file", file=path) from None
    except OSError as err:  # a symlink loop, a permission problem on a parent folder, ...
        raise DataError(f"{what} cannot be read ({err.strerror})", file=path) from None
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
        )
        raise DataError(f"{what} is {kind}, not a regular file; pass the path of a data file", file=path)
    if not os.access(path, os.R_OK):
        raise DataError(f"{what} is not readable (permission denied)", file=path)
    return path


def decode_text(data: bytes, name: str | Path, *, path_for_rows: Path | None = None) -> str:
    """``data`` decoded as UTF-8 (a leading BOM dropped); compressed or non-UTF-8 bytes raise `DataError`.

    ``name`` is what the error names (a file, or ``<stdin>``); ``path_for_rows`` lets the error
    also carry the data record (CSV/TSV records span lines) instead of the line alone.
    """
    for magic, kind, tool in _COMPRESSED_MAGIC:
        if data.startswith(magic):
            raise DataError(
                f"this is a {kind}-compressed file, not text; decompress it first (e.g. {tool}) and pass the result",
                file=name,
            )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        row = _record_number(path_for_rows, data[: err.start]) if path_for_rows is not None else None
        raise DataError(
            f"byte 0x{data[err.start]:02x} at byte offset {err.start} (line {line}) is not valid "
            "UTF-8; re-encode the file as UTF-8",
            file=name,
            row=row,
        ) from None


def read_text(path: Path) -> str:
    """The regular file at ``path`` decoded as UTF-8 (see `decode_text`); problems raise `DataError`."""
    path = require_regular_file(path)
    return decode_text(path.read_bytes(), path, path_for_rows=path)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a value")


def parse_json(text: str) -> Any:
    """``json.loads`` without Python's ``NaN``/``Infinity`` extensions (they raise ValueError)."""
    return json.loads(text, parse_constant=_refuse_constant)


def _json_error(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno}, column {err.colno}"
    return f"{err}: JSON has no NaN or Infinity, write a finite number or null"


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
    # No field can be longer than the file; csv's default cap (131,072 characters) would call a
    # long dialogue "broken quoting" although the model just truncates it.
    csv.field_size_limit(max(csv.field_size_limit(), min(len(text) + 1, _CSV_FIELD_LIMIT_CAP)))
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=quoted)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the file is empty; it needs a header line and data rows", file=path) from None
    except csv.Error as err:
        raise DataError(f"the header line cannot be parsed ({err})", file=path, row=0) from None
    header = [h.strip() for h in header]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataError(
            f"the header names column(s) {duplicated} more than once; which one holds the data is ambiguous: "
            "rename or remove the extra column",
            file=path,
            row=0,
            field=duplicated[0],
        )
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
            yield line_no, parse_json(line)
        except ValueError as err:
            raise DataError(
                f"line {line_no} is not valid JSON ({_json_error(err).replace(' at line 1,', ' at')}); each line "
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
        data = parse_json(text)
    except ValueError as err:
        raise DataError(
            f"not valid JSON ({_json_error(err)}); the file must "
            "be a JSON array of objects (or use .jsonl for one object per line)",
            file=path,
            row=getattr(err, "lineno", None),
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


def is_int(value: Any) -> bool:
    """True for an integer that is not a boolean (``True`` is an ``int`` to Python, not to a data file)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_scalar_value(value: Any) -> bool:
    """A string, or a finite number that is not a boolean: what a table cell or condition value can be."""
    if isinstance(value, str) or is_int(value):
        return True
    return isinstance(value, float) and math.isfinite(value)


def require_str(value: Any, *, file: Any, row: int | None, field: str, what: str) -> str:
    """``value`` when it is a non-empty string; a number, boolean, list or null raises `DataError`."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{what} must be a non-empty string, got {value!r}", file=file, row=row, field=field)
    return value
