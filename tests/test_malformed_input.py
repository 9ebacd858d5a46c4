"""Malformed input through the public entry points: each case is a clear error naming the file, row
and field (or the argument) and what to do, never a traceback or a silent wrong result.

Entry points: ``peft-hybrid train`` (exit code 2, one line on stderr), ``Task.load`` (`DataError`
with ``file``/``row``/``field``), `HybridConfig`, `HybridModel.from_pretrained` and
``peft-hybrid evaluate``/``predict``. One case is a wanted skip: over-long inputs are truncated
and the count is reported.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import FIXED_STEPS, quick_run_args, tiny_model
from peft_hybrid import AdapterLoadError, HybridConfig, HybridModel
from peft_hybrid.cli import main as cli
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.offline.synthetic import dialogue_summary_pairs, sentiment_sentences
from peft_hybrid.tasks import DataError, get_task

# Arguments that make any training case quick; the data arguments come from each case.
QUICK = quick_run_args(
    disable_tqdm=True,
    max_steps=1,
    eval_strategy="no",
    **FIXED_STEPS,
    save_strategy="no",
    per_device_train_batch_size=4,
    max_source_length=64,
    max_target_length=16,
    warmup_steps=0,
)
SAMSUM_FIELDS = ["id", "summary", "dialogue"]


# --- files ---------------------------------------------------------------------------------
def samsum_csv(path: Path, n: int = 4, edit: Callable[[list[dict]], None] | None = None, fields=SAMSUM_FIELDS) -> Path:
    rows = dialogue_summary_pairs(n, 0)
    if edit:
        edit(rows)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def sst2_tsv(path: Path, labels: list[str] | None = None, header: bool = True) -> Path:
    sentences = [r["sentence"] for r in sentiment_sentences(4, 0)]
    labels = labels or ["1", "0", "1", "0"]
    lines = (["sentence\tlabel"] if header else []) + [f"{s}\t{label}" for s, label in zip(sentences, labels)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wikisql_files(folder: Path, conds_column: int = 1, bad_line: str | None = None) -> tuple[Path, Path]:
    table = {"id": "1-1", "header": ["Player", "Team"], "types": ["text", "text"], "rows": [["Ann", "Reds"]]}
    tables = folder / "dev.tables.jsonl"
    tables.write_text(json.dumps(table) + "\n", encoding="utf-8")
    good = {
        "question": "Which team is Ann on?",
        "table_id": "1-1",
        "sql": {"sel": 1, "agg": 0, "conds": [[0, 0, "Ann"]]},
    }
    odd = {**good, "sql": {"sel": 0, "agg": 0, "conds": [[conds_column, 0, "Reds"]]}}
    lines = [json.dumps(good), bad_line if bad_line is not None else json.dumps(odd), json.dumps(good)]
    data = folder / "dev.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data, tables


def _blank(key: str, row: int, value: Any = "") -> Callable[[list[dict]], None]:
    def edit(rows: list[dict]) -> None:
        rows[row - 1][key] = value

    return edit


# --- cases ---------------------------------------------------------------------------------
@dataclass
class Case:
    """``make(tmp) -> (entry point, arguments)``; ``expect``: words the message must hold."""

    make: Callable[[Path], tuple[str, Any]]
    expect: list[str]
    where: tuple | None = None  # (file name, row, field) a DataError must carry
    error: type = ValueError
    stdin: bytes | None = None  # what the command reads from standard input


def _train(*args: str, task: str = "samsum") -> Callable[[Path], tuple[str, Any]]:
    """A ``peft-hybrid train`` case; ``{tmp}`` in an argument is the test's folder."""

    def make(tmp: Path) -> tuple[str, Any]:
        argv = ["train", "--task", task, *QUICK, "--output_dir", str(tmp / "out"), *args]
        return "cli", [a.format(tmp=tmp) for a in argv]

    return make


def _with(writer: Callable[[Path], Any], then: Callable[[Path], tuple[str, Any]]) -> Callable[[Path], tuple[str, Any]]:
    def make(tmp: Path) -> tuple[str, Any]:
        writer(tmp)
        return then(tmp)

    return make


def _load(task: str, file: str, tables: str | None = None) -> Callable[[Path], tuple[str, Any]]:
    def make(tmp: Path) -> tuple[str, Any]:
        kwargs = {"data_file": tmp / file, "tables_file": tmp / tables if tables else None}
        return "call", lambda: get_task(task).load(**kwargs)

    return make


TRAIN_CSV = ["--train_file", "{tmp}/train.csv"]
CASES: dict[str, Case] = {
    # ---- the data files, through peft-hybrid train
    "samsum csv without a summary column": Case(
        _with(lambda t: samsum_csv(t / "train.csv", fields=["id", "dialogue"]), _train(*TRAIN_CSV)),
        ["train.csv", "row 0", "field 'summary'", "lacks column(s) ['summary']"],
    ),
    "empty dialogue": Case(
        _with(lambda t: samsum_csv(t / "train.csv", edit=_blank("dialogue", 2)), _train(*TRAIN_CSV)),
        ["train.csv", "row 2", "field 'dialogue'", "the dialogue is empty"],
    ),
    "whitespace-only summary": Case(
        _with(lambda t: samsum_csv(t / "train.csv", edit=_blank("summary", 3, "  \t ")), _train(*TRAIN_CSV)),
        ["train.csv", "row 3", "field 'summary'", "the summary is empty"],
    ),
    "non-UTF-8 bytes": Case(
        _with(
            lambda t: (t / "train.csv").write_bytes(b"id,summary,dialogue\r\n1,ok,fine\r\n2,ok,caf\xe9 time\r\n"),
            _train(*TRAIN_CSV),
        ),
        ["train.csv", "row 2", "byte 0xe9", "not valid UTF-8", "re-encode the file as UTF-8"],
    ),
    "broken CSV quoting": Case(
        _with(
            lambda t: (t / "train.csv").write_text(
                'id,summary,dialogue\n1,"ok","fine"\n2,"open quote,x\n', encoding="utf-8"
            ),
            _train(*TRAIN_CSV),
        ),
        ["train.csv", "row 2", "broken quoting"],
    ),
    "a row with too many fields": Case(
        _with(
            lambda t: (t / "train.csv").write_text("id,summary,dialogue\n1,a,b\n2,a,b,c\n", encoding="utf-8"),
            _train(*TRAIN_CSV),
        ),
        ["train.csv", "row 2", "expected 3 fields"],
    ),
    "header-only file (empty dataset)": Case(
        _with(lambda t: (t / "train.csv").write_text("id,summary,dialogue\n", encoding="utf-8"), _train(*TRAIN_CSV)),
        ["train.csv", "the dataset has no examples"],
    ),
    "zero-byte file": Case(
        _with(lambda t: (t / "train.csv").write_bytes(b""), _train(*TRAIN_CSV)), ["train.csv", "the file is empty"]
    ),
    "missing data file": Case(_train("--train_file", "{tmp}/nope.csv"), ["nope.csv", "file not found"]),
    "wrong file extension": Case(
        _with(lambda t: samsum_csv(t / "train.parquet"), _train("--train_file", "{tmp}/train.parquet")),
        ["train.parquet", "unsupported file type", ".csv"],
    ),
    "sst2 label None (empty)": Case(
        _with(
            lambda t: sst2_tsv(t / "train.tsv", labels=["1", "", "0", "1"]),
            _train("--train_file", "{tmp}/train.tsv", task="sst2"),
        ),
        ["train.tsv", "row 2", "field 'label'", "is not 0 (negative) or 1 (positive)"],
    ),
    "sst2 label out of range": Case(
        _with(
            lambda t: sst2_tsv(t / "train.tsv", labels=["1", "0", "2", "1"]),
            _train("--train_file", "{tmp}/train.tsv", task="sst2"),
        ),
        ["train.tsv", "row 3", "field 'label'", "'2'"],
    ),
    "sst2 GLUE test labels (-1)": Case(
        _with(
            lambda t: sst2_tsv(t / "train.tsv", labels=["-1"] * 4),
            _train("--train_file", "{tmp}/train.tsv", task="sst2"),
        ),
        ["train.tsv", "row 1", "the GLUE test split has no labels"],
    ),
    "TSV without a header": Case(
        _with(
            lambda t: sst2_tsv(t / "train.tsv", header=False), _train("--train_file", "{tmp}/train.tsv", task="sst2")
        ),
        ["train.tsv", "row 0", "lacks column(s)", "sentence<TAB>label"],
    ),
    "wikisql bad JSONL line": Case(
        _with(
            lambda t: wikisql_files(t, bad_line='{"question": "x", '),
            _train("--train_file", "{tmp}/dev.jsonl", "--tables_file", "{tmp}/dev.tables.jsonl", task="wikisql"),
        ),
        ["dev.jsonl", "row 2", "line 2 is not valid JSON"],
    ),
    "wikisql condition beyond the header": Case(
        _with(
            lambda t: wikisql_files(t, conds_column=5),
            _train("--train_file", "{tmp}/dev.jsonl", "--tables_file", "{tmp}/dev.tables.jsonl", task="wikisql"),
        ),
        ["dev.jsonl", "row 2", "field 'sql'", "column index 5 is beyond the 2 columns"],
    ),
    # ---- arguments and configs
    "unknown task": Case(_train(*TRAIN_CSV, task="nope"), ["unknown task 'nope'"]),
    "invalid YAML": Case(
        _with(lambda t: (t / "c.yaml").write_text("mode: [hybrid\n"), _train("--config", "{tmp}/c.yaml")),
        ["c.yaml", "is not valid YAML"],
    ),
    "unknown YAML key": Case(
        _with(
            lambda t: (t / "c.yaml").write_text("mode: hybrid\nlearning_rat: 0.1\n"),
            _train("--config", "{tmp}/c.yaml"),
        ),
        ["c.yaml", "unknown key(s) ['learning_rat']"],
    ),
    "mode lora with r=0": Case(_train(*TRAIN_CSV, "--mode", "lora", "--r", "0"), ["r=0"]),
    "num_virtual_tokens beyond max_source_length": Case(
        _with(lambda t: samsum_csv(t / "train.csv"), _train(*TRAIN_CSV, "--num_virtual_tokens", "80")),
        ["num_virtual_tokens=80", "max_source_length=64"],
    ),
    "zero batch size": Case(
        _with(lambda t: samsum_csv(t / "train.csv"), _train(*TRAIN_CSV, "--per_device_train_batch_size", "0")),
        ["--per_device_train_batch_size 0: out of range, must be >= 1"],
    ),
    "negative learning rate": Case(
        _with(lambda t: samsum_csv(t / "train.csv"), _train(*TRAIN_CSV, "--learning_rate", "-0.001")),
        ["--learning_rate -0.001: out of range, must be > 0"],
    ),
    "zero learning rate": Case(
        _with(lambda t: samsum_csv(t / "train.csv"), _train(*TRAIN_CSV, "--learning_rate", "0")),
        ["--learning_rate 0.0: out of range, must be > 0"],
    ),
    "dataset id and a local file together": Case(
        _train(*TRAIN_CSV, "--dataset_id", "knkarthick/samsum"), ["dataset_id and local files", "exclude each other"]
    ),
    "output directory is a file": Case(
        _with(
            lambda t: (samsum_csv(t / "train.csv"), (t / "taken").write_text("x")),
            _train(*TRAIN_CSV, "--output_dir", "{tmp}/taken"),
        ),
        ["output_dir", "taken: it is a file"],
    ),
    "output directory not writable": Case(
        _with(lambda t: samsum_csv(t / "train.csv"), _train(*TRAIN_CSV, "--output_dir", "/sys/peft-hybrid-run")),
        ["output_dir", "/sys/peft-hybrid-run", "Pick a folder you can write to"],
    ),
    "hybrid config with an unknown mode": Case(
        lambda t: ("call", lambda: HybridConfig(mode="both")), ["mode", "both"]
    ),
    "hybrid config with lora_dropout 1.5": Case(
        lambda t: ("call", lambda: HybridConfig(lora_dropout=1.5)), ["lora_dropout"]
    ),
    # ---- Task.load: the error carries file, row and field as attributes
    "samsum JSON that is not an array": Case(
        _with(lambda t: (t / "train.json").write_text('{"id": 1}'), _load("samsum", "train.json")),
        ["expected a JSON array"],
        where=("train.json", None, None),
        error=DataError,
    ),
    "samsum JSON record without a dialogue": Case(
        _with(lambda t: (t / "train.json").write_text('[{"id": "1", "summary": "s"}]'), _load("samsum", "train.json")),
        ["'dialogue' is missing"],
        where=("train.json", 1, "dialogue"),
        error=DataError,
    ),
    "samsum dialogue null in JSON": Case(
        _with(
            lambda t: (t / "train.json").write_text('[{"id": "1", "summary": "s", "dialogue": null}]'),
            _load("samsum", "train.json"),
        ),
        ["the dialogue is missing (got None)"],
        where=("train.json", 1, "dialogue"),
        error=DataError,
    ),
    "wikisql table missing from the tables file": Case(
        _with(
            lambda t: (wikisql_files(t), (t / "dev.tables.jsonl").write_text("")),
            _load("wikisql", "dev.jsonl", "dev.tables.jsonl"),
        ),
        ["table '1-1' is not in"],
        where=("dev.jsonl", 1, "table_id"),
        error=DataError,
    ),
    # ---- saved adapters
    "adapter folder that does not exist": Case(
        lambda t: ("call", lambda: HybridModel.from_pretrained(t / "no-such-adapter", t5_from_preset("tiny")[0])),
        ["no-such-adapter", "neither an existing folder nor a Hub repo id"],
        error=AdapterLoadError,
    ),
    "evaluate with an adapter folder that does not exist": Case(
        lambda t: ("cli", ["evaluate", "--adapter", str(t / "gone"), "--task", "sst2", "--out", str(t / "o")]),
        ["gone"],
    ),
}


def _adapter_for_another_base(tmp: Path) -> tuple[str, Any]:
    model, _ = tiny_model("hybrid")
    model.save_pretrained(tmp / "adapter")
    from transformers import T5Config, T5ForConditionalGeneration

    other = T5ForConditionalGeneration(
        T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    )
    return "call", lambda: HybridModel.from_pretrained(tmp / "adapter", other)


def _predict_bad_jsonl(tmp: Path) -> tuple[str, Any]:
    model, _ = tiny_model("hybrid")
    model.hybrid_config.base_model_name_or_path = "preset:tiny"
    model.save_pretrained(tmp / "adapter")
    (tmp / "in.jsonl").write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    return "cli", [
        "predict",
        "--adapter",
        str(tmp / "adapter"),
        "--model_preset",
        "tiny",
        "--input",
        str(tmp / "in.jsonl"),
    ]


CASES["adapter for another base"] = Case(
    _adapter_for_another_base,
    ["was made for a base of shape", "'d_model': 64", "'d_model': 32"],
    error=AdapterLoadError,
)
CASES["predict with a bad JSONL line"] = Case(_predict_bad_jsonl, ["in.jsonl line 2 is not valid JSON"])


# --- strict inputs: what a file really is, the type a value must have -----------------------
def _yaml(text: str, *args: str) -> Callable[[Path], tuple[str, Any]]:
    """A ``peft-hybrid train --config c.yaml`` case (with a valid training file) for this YAML text."""
    return _with(
        lambda t: (samsum_csv(t / "train.csv"), (t / "c.yaml").write_text(text, encoding="utf-8")),
        _train(*TRAIN_CSV, "--config", "{tmp}/c.yaml", *args),
    )


def _zip_bytes(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train.csv", data)
    return buffer.getvalue()


def _compressed(name: str, compress: Callable[[bytes], bytes]) -> Case:
    def write(tmp: Path) -> None:
        samsum_csv(tmp / "plain.csv")
        (tmp / "train.csv").write_bytes(compress((tmp / "plain.csv").read_bytes()))

    return Case(_with(write, _train(*TRAIN_CSV)), ["train.csv", f"{name}-compressed file", "decompress it first"])


def _wikisql_line(sql: str) -> Callable[[Path], tuple[str, Any]]:
    line = '{"question": "q", "table_id": "1-1", "sql": ' + sql + "}"
    return _with(lambda t: wikisql_files(t, bad_line=line), _load("wikisql", "dev.jsonl", "dev.tables.jsonl"))


def _wikisql_table(table: str) -> Callable[[Path], tuple[str, Any]]:
    return _with(
        lambda t: (wikisql_files(t), (t / "dev.tables.jsonl").write_text(table + "\n")),
        _load("wikisql", "dev.jsonl", "dev.tables.jsonl"),
    )


def _predict(input_arg: str, write: Callable[[Path], Any] = lambda t: None) -> Callable[[Path], tuple[str, Any]]:
    def make(tmp: Path) -> tuple[str, Any]:
        _, argv = _predict_bad_jsonl(tmp)
        write(tmp)
        return "cli", [*argv[:-1], input_arg.format(tmp=tmp)]

    return make


def _saved_with_tokenizer(tmp: Path, damage: Callable[[Path], Any]) -> Path:
    model, tokenizer = tiny_model("hybrid", task="sst2")
    folder = model.save_pretrained(tmp / "adapter")
    tokenizer.save_pretrained(folder)
    damage(folder)
    (tmp / "in.txt").write_text("a gorgeous film\n", encoding="utf-8")
    return folder


def _predict_damaged(damage: Callable[[Path], Any], adapter: Callable[[Path], Path] | None = None):
    def make(tmp: Path) -> tuple[str, Any]:
        folder = _saved_with_tokenizer(tmp, damage)
        target = adapter(tmp) if adapter is not None else folder
        return "cli", ["predict", "--adapter", str(target), "--input", str(tmp / "in.txt"), "--no_progress"]

    return make


STRICT_CASES: dict[str, Case] = {
    "duplicate column name": Case(
        _with(
            lambda t: (t / "train.tsv").write_text("sentence\tlabel\tlabel\ngood\t1\t0\n", encoding="utf-8"),
            _train("--train_file", "{tmp}/train.tsv", task="sst2"),
        ),
        ["train.tsv", "row 0", "field 'label'", "column(s) ['label'] more than once"],
    ),
    "data file is a folder": Case(
        _with(lambda t: (t / "train.csv").mkdir(), _train(*TRAIN_CSV)), ["train.csv", "a folder, not a regular file"]
    ),
    "data file is a FIFO (never opened)": Case(
        _with(lambda t: os.mkfifo(t / "train.csv"), _train(*TRAIN_CSV)),
        ["train.csv", "a FIFO (named pipe), not a regular file"],
    ),
    "data file is a device": Case(_train("--train_file", "/dev/null"), ["/dev/null", "a device, not a regular file"]),
    "gzip data file": _compressed("gzip", gzip.compress),
    "bzip2 data file": _compressed("bzip2", bz2.compress),
    "xz data file": _compressed("xz", lzma.compress),
    "zip data file": _compressed("zip", _zip_bytes),
    "zstd data file": _compressed("zstd", lambda data: b"\x28\xb5\x2f\xfd" + data),
    "tables file is a folder": Case(
        _with(lambda t: (wikisql_files(t), (t / "t").mkdir()), _load("wikisql", "dev.jsonl", "t")),
        ["tables file is a folder"],
        where=("t", None, None),
        error=DataError,
    ),
    "samsum JSON id true": Case(
        _with(
            lambda t: (t / "train.json").write_text('[{"id": true, "summary": "s", "dialogue": "A: hi"}]'),
            _load("samsum", "train.json"),
        ),
        ["the id must be a string or an integer, got True"],
        where=("train.json", 1, "id"),
        error=DataError,
    ),
    "samsum JSON summary a number": Case(
        _with(
            lambda t: (t / "train.json").write_text('[{"id": "1", "summary": 5, "dialogue": "A: hi"}]'),
            _load("samsum", "train.json"),
        ),
        ["the summary must be text, got 5 (int)"],
        where=("train.json", 1, "summary"),
        error=DataError,
    ),
    "samsum JSON summary NaN": Case(
        _with(
            lambda t: (t / "train.json").write_text('[{"id": "1", "summary": NaN, "dialogue": "A: hi"}]'),
            _load("samsum", "train.json"),
        ),
        ["NaN is not a value", "JSON has no NaN or Infinity"],
        where=("train.json", None, None),
        error=DataError,
    ),
    "wikisql agg true": Case(
        _wikisql_line('{"sel": 0, "agg": true, "conds": []}'),
        ["agg must be 0..5", "got True"],
        where=("dev.jsonl", 2, "sql.agg"),
        error=DataError,
    ),
    "wikisql condition column false": Case(
        _wikisql_line('{"sel": 0, "agg": 0, "conds": [[false, 0, "Reds"]]}'),
        ["condition [False, 0, 'Reds'] must be"],
        where=("dev.jsonl", 2, "sql.conds"),
        error=DataError,
    ),
    "wikisql condition value Infinity": Case(
        _wikisql_line('{"sel": 0, "agg": 0, "conds": [[1, 0, Infinity]]}'),
        ["line 2 is not valid JSON", "Infinity is not a value"],
        where=("dev.jsonl", 2, None),
        error=DataError,
    ),
    "wikisql condition value a list": Case(
        _wikisql_line('{"sel": 0, "agg": 0, "conds": [[1, 0, ["Reds"]]]}'),
        ["a string or a number"],
        where=("dev.jsonl", 2, "sql.conds"),
        error=DataError,
    ),
    "wikisql table_id a number": Case(
        _with(
            lambda t: wikisql_files(
                t, bad_line='{"question": "q", "table_id": 11, "sql": {"sel": 0, "agg": 0, "conds": []}}'
            ),
            _load("wikisql", "dev.jsonl", "dev.tables.jsonl"),
        ),
        ["table_id must be a non-empty string, got 11"],
        where=("dev.jsonl", 2, "table_id"),
        error=DataError,
    ),
    "wikisql table cell a boolean": Case(
        _wikisql_table('{"id": "1-1", "header": ["Player", "Team"], "rows": [["Ann", true]]}'),
        ["table row 0 must be a list of 2 cells, each a string or a finite number"],
        where=("dev.tables.jsonl", 1, "rows"),
        error=DataError,
    ),
    "wikisql header with a number": Case(
        _wikisql_table('{"id": "1-1", "header": ["Player", 2], "rows": []}'),
        ["header must be a non-empty list of column names (strings)"],
        where=("dev.tables.jsonl", 1, "header"),
        error=DataError,
    ),
    # ---- YAML configs and argument ranges
    "YAML duplicate key": Case(
        _yaml("learning_rate: 0.01\nmode: lora\nlearning_rate: 0.02\n"),
        ["c.yaml", "key 'learning_rate' is given twice, at lines 1 and 3"],
    ),
    "YAML list for a number": Case(
        _yaml("mode: lora\nlearning_rate: [0.001]\n"),
        ["--config", "c.yaml line 2: learning_rate", "a list is not a value here"],
    ),
    "YAML null for a number": Case(
        _yaml("warmup_steps: null\n"), ["c.yaml line 1: warmup_steps", "null is not a value here; give a number"]
    ),
    "YAML mapping for a batch size": Case(
        _yaml("per_device_train_batch_size: {a: 1}\n"),
        ["c.yaml line 1: per_device_train_batch_size", "a mapping is not a value here; give an integer"],
    ),
    "YAML boolean for an integer": Case(
        _yaml("seed: true\n"), ["c.yaml line 1: seed", "True is a boolean, not an integer"]
    ),
    "YAML .nan for a number": Case(
        _yaml("learning_rate: .nan\n"), ["c.yaml line 1: learning_rate", "give a finite number"]
    ),
    "YAML 'inf' text for a number": Case(
        _yaml("num_train_epochs: inf\n"), ["c.yaml line 1: num_train_epochs", "'inf' is not a value"]
    ),
    "YAML text for a number": Case(
        _yaml("learning_rate: fast\n"), ["c.yaml line 1: learning_rate", "'fast' is not a number"]
    ),
    "YAML float for an integer": Case(
        _yaml("max_steps: 2.5\n"), ["c.yaml line 1: max_steps", "2.5 is not a whole number"]
    ),
    "YAML number for a text (octal revision)": Case(
        _yaml("model_revision: 0123\n"), ["c.yaml line 1: model_revision", "83 is a number, not a string; quote it"]
    ),
    "YAML negative seed": Case(
        _yaml("seed: -1\n"), ["--seed -1 (from --config", "c.yaml line 1): out of range, must be >= 0"]
    ),
    "YAML value refused by the config names the file": Case(
        _yaml("mode: lora\nr: 0\n"), ["r=0", "r from --config", "c.yaml line 2"]
    ),
    "negative seed": Case(_train(*TRAIN_CSV, "--seed", "-3"), ["--seed -3: out of range, must be >= 0"]),
    "lora_dropout 1": Case(
        _train(*TRAIN_CSV, "--lora_dropout", "1"), ["--lora_dropout 1.0: out of range, must be in [0, 1)"]
    ),
    "zero epochs": Case(
        _train(*TRAIN_CSV, "--num_train_epochs", "0"), ["--num_train_epochs 0.0: out of range, must be > 0"]
    ),
    "max_steps 0": Case(_train(*TRAIN_CSV, "--max_steps", "0"), ["--max_steps 0: out of range, must be >= 1 (or -1)"]),
    "adam_beta2 1": Case(
        _train(*TRAIN_CSV, "--adam_beta2", "1"), ["--adam_beta2 1.0: out of range, must be in [0, 1)"]
    ),
    "config file is a folder": Case(
        _with(lambda t: (t / "c.yaml").mkdir(), _train("--config", "{tmp}/c.yaml")), ["c.yaml", "not a regular file"]
    ),
    # ---- peft-hybrid predict input
    "predict input with undecodable bytes": Case(
        _predict("{tmp}/in.txt", lambda t: (t / "in.txt").write_bytes(b"fine\ncaf\xe9\n")),
        ["--input", "in.txt", "byte 0xe9", "(line 2) is not valid UTF-8"],
    ),
    "predict input is a folder": Case(
        _predict("{tmp}/in.txt", lambda t: (t / "in.txt").mkdir()), ["in.txt", "a folder, not a regular file"]
    ),
    "predict input is gzip-compressed": Case(
        _predict("{tmp}/in.txt", lambda t: (t / "in.txt").write_bytes(gzip.compress(b"fine\n"))),
        ["in.txt", "gzip-compressed file"],
    ),
    "predict binary on standard input": Case(
        _predict("-"), ["--input <stdin>", "byte 0x", "is not valid UTF-8"], stdin=b"ok\n\x89PNG\r\n\x1a\n\xff\x00"
    ),
    "predict NUL bytes on standard input": Case(
        _predict("-"), ["--input <stdin> line 2 holds a NUL byte"], stdin=b"ok\n\x00\x01\x02\n"
    ),
    "predict JSONL with NaN": Case(
        _predict("{tmp}/in.jsonl", lambda t: (t / "in.jsonl").write_text('{"text": NaN}\n')),
        ["in.jsonl line 1 is not valid JSON (NaN is not a value)"],
    ),
    # ---- evaluate --out
    "evaluate --out not writable": Case(
        lambda t: ("cli", [*_evaluate_args(t), "--out", "/sys/peft-hybrid-eval"]),
        ["--out", "/sys/peft-hybrid-eval", "Pick a folder you can write to"],
    ),
}
CASES.update(STRICT_CASES)


def _evaluate_args(tmp: Path) -> list[str]:
    _, argv = _predict_bad_jsonl(tmp)
    sst2_tsv(tmp / "dev.tsv")
    adapter = argv[argv.index("--adapter") + 1]
    return [
        "evaluate",
        "--adapter",
        adapter,
        "--model_preset",
        "tiny",
        "--task",
        "sst2",
        "--data_file",
        str(tmp / "dev.tsv"),
    ]


def _nan_weights(folder: Path) -> None:
    import hashlib

    from safetensors.torch import load_file, save_file

    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["prompt_embeddings"][0, 0] = float("nan")
    save_file(tensors, weights)
    config = json.loads((folder / "hybrid_config.json").read_text())
    config["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # a valid hash: only NaN is wrong
    (folder / "hybrid_config.json").write_text(json.dumps(config))


def _truncate_tokenizer(folder: Path) -> None:
    path = folder / "tokenizer.json"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # what a full disk left behind


def _symlink_loop(tmp: Path) -> Path:
    (tmp / "loop-a").symlink_to(tmp / "loop-b")
    (tmp / "loop-b").symlink_to(tmp / "loop-a")
    return tmp / "loop-a"


CASES["predict with an adapter holding NaN"] = Case(
    _predict_damaged(_nan_weights), ["adapter_model.safetensors", "prompt_embeddings (1 NaN", "allow_nonfinite=True"]
)
CASES["predict with a truncated tokenizer.json"] = Case(
    _predict_damaged(_truncate_tokenizer), ["adapter/tokenizer.json is damaged", "Save the adapter folder again"]
)
CASES["predict with an adapter path that is a file"] = Case(
    _predict_damaged(lambda f: None, adapter=lambda t: t / "in.txt"), ["in.txt is a file, not an adapter folder"]
)
CASES["predict with an adapter path that is a symlink loop"] = Case(
    _predict_damaged(lambda f: None, adapter=_symlink_loop), ["loop-a is a symbolic link loop"]
)


@pytest.mark.parametrize("name", CASES)
def test_malformed_input_is_a_clear_error(name, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    kind, target = case.make(tmp_path)
    if case.stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(case.stdin), encoding="utf-8"))
    if kind == "cli":
        code = cli(target)
        err = capsys.readouterr().err.strip()
        message = err.splitlines()[-1] if err else ""
        assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
        assert "Traceback" not in err and message.startswith(f"peft-hybrid {target[0]}: error: "), err[-2000:]
    else:
        with pytest.raises(case.error) as raised:
            target()
        message = str(raised.value)
        if case.where is not None:
            file, row, fld = case.where
            assert Path(raised.value.file).name == file and raised.value.row == row and raised.value.field == fld
    missing = [words for words in case.expect if words not in message]
    assert not missing, f"{missing} not in: {message}"


def test_too_many_cases_to_miss():
    assert len(CASES) >= 25


@pytest.mark.slow
def test_over_long_inputs_are_truncated_and_counted(tmp_path, capsys, caplog):
    """Skipping is not what a user wants for long dialogues: they are cut to max_source_length and counted."""
    samsum_csv(tmp_path / "train.csv", n=4, edit=lambda rows: [r.update(dialogue=r["dialogue"] * 20) for r in rows])
    argv = [
        "train",
        "--task",
        "samsum",
        *QUICK,
        "--max_source_length",
        "32",
        "--train_file",
        str(tmp_path / "train.csv"),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    with caplog.at_level("WARNING", logger="peft_hybrid.training.splits"):
        assert cli(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["train"]["examples"] == 4 and results["data"]["train"]["truncated_sources"] == 4
    assert "samsum train: truncated 4 of 4 inputs to 32 tokens" in caplog.text


def test_evaluate_checks_out_before_loading_or_generating(tmp_path, capsys, monkeypatch):
    import peft_hybrid.inference

    def never(*args, **kwargs):
        raise AssertionError("generation ran before --out was checked")

    monkeypatch.setattr(peft_hybrid.inference, "evaluate_rows", never)
    monkeypatch.setattr(peft_hybrid.inference, "load_for_inference", never)
    (tmp_path / "taken").write_text("x")
    assert cli([*_evaluate_args(tmp_path), "--out", str(tmp_path / "taken")]) == 2
    assert "error: --out: Cannot save to" in capsys.readouterr().err
