"""``peft-hybrid predict``: batched generation with saved adapters, one output per input line.

Input (a file or ``-`` for stdin) is plain text, one input per line, or JSON Lines whose objects
carry the text under ``--field`` (default ``text``, else ``source``). Outputs go to stdout, one
per line (line breaks inside an output become spaces), or as JSON Lines with ``--jsonl``; the
progress bar goes to stderr.

Several named adapters on one base: repeat ``--adapter NAME=PATH_OR_REPO`` and give each JSON
line an ``adapter`` field; the inputs are batched across adapters (mixed-task batches), and the
outputs keep the input order.

Example::

    printf 'it is a charming journey .\\nunflinchingly bleak\\n' | \\
        peft-hybrid predict --adapter runs/sst2 --task sst2
    peft-hybrid predict --adapter sst2=runs/sst2 --adapter samsum=runs/samsum --input mixed.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from peft_hybrid.cli._inference_args import (
    add_model_arguments,
    add_subfolder_argument,
    check_positive,
    load_from_args,
)

_NAMED = re.compile(r"([A-Za-z0-9_-]+)=(.+)", re.DOTALL)
INPUT_FORMATS = ("auto", "text", "jsonl")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="batched generation from a file or stdin",
        description=(
            "Generate one output per input with saved adapters (text or JSON Lines in, one line out per input)."
        ),
    )
    parser.add_argument(
        "--adapter",
        required=True,
        action="append",
        help="adapter folder or Hub repo id; repeat as NAME=PATH_OR_REPO for several (JSON Lines pick by 'adapter')",
    )
    parser.add_argument("--revision", default=None, help="revision of --adapter on the Hub (one adapter only)")
    add_subfolder_argument(parser)
    parser.add_argument(
        "--input", default="-", help="input file (.txt: one input per line; .jsonl: objects), or - for stdin (default)"
    )
    parser.add_argument(
        "--input_format",
        "--input-format",
        choices=INPUT_FORMATS,
        default="auto",
        help="text (one input per line) or jsonl; auto (default): by extension (.txt text, .jsonl JSON Lines), "
        "else JSON Lines when every line is an object",
    )
    parser.add_argument(
        "--field", default=None, help="JSON Lines key holding the input text (default: text, else source)"
    )
    parser.add_argument(
        "--task", default=None, help="task whose generation settings and tag to use (default: the adapter's)"
    )
    parser.add_argument(
        "--jsonl", action="store_true", help='write {"input", "prediction"} JSON Lines instead of plain lines'
    )
    add_model_arguments(parser)
    return parser


def parse_adapters(values: list[str]) -> dict[str, str]:
    """``--adapter`` values as name → path or repo id; one unnamed adapter is named ``default``."""
    empty = [value for value in values if not value.strip()]
    if empty:
        raise ValueError(f"--adapter {empty[0]!r}: pass an adapter folder or Hub repo id (or NAME=PATH_OR_REPO).")
    if len(values) == 1 and not _NAMED.fullmatch(values[0]):
        return {"default": values[0]}
    adapters: dict[str, str] = {}
    for value in values:
        match = _NAMED.fullmatch(value)
        if match is not None and Path(value).exists():  # never guess which of the two was meant
            name, where = match.groups()
            raise ValueError(
                f"--adapter {value}: both an existing path and NAME=PATH. Write --adapter ./{value} for the folder, "
                f"or --adapter {name}=./{where} for an adapter named {name!r} at {where}."
            )
        if match is None:
            raise ValueError(f"--adapter {value}: with several adapters, name each one: --adapter NAME=PATH_OR_REPO.")
        name, where = match.groups()
        if name in adapters:
            raise ValueError(f"--adapter {name}=... is given twice; give each adapter one name.")
        adapters[name] = where
    return adapters


def read_records(source: str, field: str | None = None, input_format: str = "auto") -> list[tuple[str, str | None]]:
    """``(text, adapter)`` per input from a file or ``-`` (stdin); ``adapter`` is a JSON line's ``adapter`` field.

    ``input_format``: ``text`` (one input per line), ``jsonl``, or ``auto``: by the extension
    (``.txt`` text, ``.jsonl`` JSON Lines), else JSON Lines when every line is an object.
    """
    from peft_hybrid.tasks._readers import decode_text, parse_json, require_regular_file

    # Bytes, decoded here, so that binary input is refused naming the line instead of reaching the tokenizer.
    if source == "-":
        name = "<stdin>"
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    else:
        name = source
        data = require_regular_file(source, "--input file").read_bytes()
    text = decode_text(data, f"--input {name}")
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ValueError(f"--input {name} line {line} holds a NUL byte: this is binary data, not text.")
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ValueError(f"--input {name} holds no inputs; give one input per line.")
    if input_format == "auto":
        objects = all(line.lstrip().startswith("{") for _, line in lines)
        input_format = "jsonl" if name.endswith(".jsonl") or (objects and not name.endswith(".txt")) else "text"
    if input_format == "text":
        if field is not None:
            raise ValueError(f"--field {field} applies to JSON Lines input, but {name} is plain text.")
        return [(line.rstrip("\r"), None) for _, line in lines]
    records = []
    for number, line in lines:
        try:
            record = parse_json(line)
        except ValueError as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else err
            raise ValueError(
                f"--input {name} line {number} is not valid JSON ({reason}); give one JSON object per line."
            ) from None
        key = field or next((k for k in ("text", "source") if isinstance(record, dict) and k in record), "text")
        value = record.get(key) if isinstance(record, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"--input {name} line {number} has no text under {key!r}; set --field to the key holding the input."
            )
        adapter = record.get("adapter")
        if adapter is not None and not isinstance(adapter, str):
            raise ValueError(f"--input {name} line {number}: 'adapter' must be a string naming an --adapter.")
        records.append((value, adapter))
    return records


def _line_adapters(records, adapters: dict[str, str], source: str) -> list[str]:
    """Which adapter each input uses: its ``adapter`` field (required with several adapters)."""
    names = []
    for number, (_, wanted) in enumerate(records, start=1):
        if wanted is None:
            if len(adapters) > 1:
                raise ValueError(
                    f"--input {source} input {number} names no adapter; with several --adapter, give each JSON line "
                    f"an 'adapter' field, one of {sorted(adapters)}."
                )
            wanted = next(iter(adapters))
        if wanted not in adapters:
            raise ValueError(
                f"--input {source} input {number} asks for adapter {wanted!r}; the --adapter names are "
                f"{sorted(adapters)}."
            )
        names.append(wanted)
    return names


def run(args: argparse.Namespace) -> int:
    from peft_hybrid.inference import generate_texts, model_inputs

    for name in ("batch_size", "max_new_tokens", "num_beams", "max_source_length"):
        check_positive(name, getattr(args, name))
    adapters = parse_adapters(args.adapter)
    if args.revision is not None and len(adapters) > 1:
        raise ValueError("--revision pins one adapter; with several --adapter, pin each in its repo id instead.")
    if args.subfolder is not None and len(adapters) > 1:
        raise ValueError("--subfolder picks one adapter; with several --adapter, write each as NAME=owner/name:SUB.")
    records = read_records(args.input, args.field, args.input_format)
    names = _line_adapters(records, adapters, args.input)
    first, *others = adapters.items()
    model, tokenizer = load_from_args(args, first[1], adapter_name=first[0])
    for name, where in others:
        model.load_adapter(where, name)
    model.to(model.device).eval()
    settings = _settings(model, adapters, args)
    inputs = [
        model_inputs(
            model.adapters[name],
            [text],
            task=args.task,
            task_prefix=args.task_prefix,
            use_task_tags=args.use_task_tags,
        )[0]
        for (text, _), name in zip(records, names)
    ]
    predictions = generate_texts(
        model,
        tokenizer,
        inputs,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        adapter_names=names if len(adapters) > 1 else None,
        fast=args.fast,
        **settings,
    )
    for (text, _), prediction in zip(records, predictions):
        if args.jsonl:
            sys.stdout.write(json.dumps({"input": text, "prediction": prediction}, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(" ".join(prediction.splitlines()) + "\n")
    sys.stdout.flush()
    return 0


def _settings(model, adapters: dict[str, str], args) -> dict:
    """One source length and one set of generation settings for the mixed batches, each adapter's own
    (saved with it, then the flags); adapters that disagree are refused."""
    from peft_hybrid.inference import generation_settings, source_length

    settings = {}
    for name in adapters:
        config = model.adapters[name]
        own = generation_settings(config, args.task, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
        settings[name] = {**own, "max_source_length": source_length(config, args.max_source_length)}
    distinct = {json.dumps(s, sort_keys=True) for s in settings.values()}
    if len(distinct) > 1:
        raise ValueError(
            f"The adapters generate with different settings ({settings}); one mixed batch needs one. "
            "Pass --task, --max_new_tokens, --num_beams and --max_source_length to choose, or run predict once per "
            "adapter."
        )
    return next(iter(settings.values()))
