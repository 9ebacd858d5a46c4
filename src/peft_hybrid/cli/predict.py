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

from peft_hybrid.cli._inference_args import add_model_arguments, check_positive

DEFAULT_MAX_NEW_TOKENS = 64
_NAMED = re.compile(r"^([A-Za-z0-9_-]+)=(.+)$")


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
    parser.add_argument(
        "--input", default="-", help="input file (.txt: one input per line; .jsonl: objects), or - for stdin (default)"
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
    if len(values) == 1 and not _NAMED.match(values[0]):
        return {"default": values[0]}
    adapters: dict[str, str] = {}
    for value in values:
        match = _NAMED.match(value)
        if match is None:
            raise ValueError(f"--adapter {value}: with several adapters, name each one: --adapter NAME=PATH_OR_REPO.")
        name, where = match.groups()
        if name in adapters:
            raise ValueError(f"--adapter {name}=... is given twice; give each adapter one name.")
        adapters[name] = where
    return adapters


def read_records(source: str, field: str | None = None) -> list[tuple[str, str | None]]:
    """``(text, adapter)`` per input; ``adapter`` is the JSON line's ``adapter`` field, if any."""
    if source == "-":
        text, name = sys.stdin.read(), "<stdin>"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"--input {source}: file not found; pass a text/JSONL file or - for stdin.")
        text, name = path.read_text(encoding="utf-8"), source
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ValueError(f"--input {name} holds no inputs; give one input per line.")
    if not (name.endswith(".jsonl") or all(line.lstrip().startswith("{") for _, line in lines)):
        if field is not None:
            raise ValueError(f"--field {field} applies to JSON Lines input, but {name} is plain text.")
        return [(line.rstrip("\r"), None) for _, line in lines]
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--input {name} line {number} is not valid JSON ({err.msg}); give one JSON object per line."
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
    from peft_hybrid.hub.access import HubUnreachableError
    from peft_hybrid.inference import generate_texts, load_for_inference

    for name in ("batch_size", "max_new_tokens", "max_source_length"):
        check_positive(name, getattr(args, name))
    adapters = parse_adapters(args.adapter)
    if args.revision is not None and len(adapters) > 1:
        raise ValueError("--revision pins one adapter; with several --adapter, pin each in its repo id instead.")
    records = read_records(args.input, args.field)
    names = _line_adapters(records, adapters, args.input)
    first, *others = adapters.items()
    try:
        model, tokenizer = load_for_inference(
            first[1],
            base=args.base,
            preset=args.model_preset,
            revision=args.revision,
            device=args.device,
            adapter_name=first[0],
        )
        for name, where in others:
            model.load_adapter(where, name)
    except HubUnreachableError as err:
        print(f"peft-hybrid predict: error: {err}", file=sys.stderr)
        return 1
    model.to(model.device).eval()
    generation = _generation_settings(model, adapters, args)
    inputs = [_model_input(model, name, text, args) for (text, _), name in zip(records, names)]
    predictions = generate_texts(
        model,
        tokenizer,
        inputs,
        batch_size=args.batch_size,
        max_source_length=args.max_source_length,
        progress=not args.no_progress,
        adapter_names=names if len(adapters) > 1 else None,
        **generation,
    )
    for (text, _), prediction in zip(records, predictions):
        if args.jsonl:
            sys.stdout.write(json.dumps({"input": text, "prediction": prediction}, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(" ".join(prediction.splitlines()) + "\n")
    sys.stdout.flush()
    return 0


def _task(model, name: str, args):
    from peft_hybrid.tasks import get_task

    task_name = args.task or model.adapters[name].task
    return get_task(task_name) if task_name else None


def _generation_settings(model, adapters: dict[str, str], args) -> dict:
    """One set of generation settings for the mixed batches; adapters whose tasks disagree are refused."""
    settings = {}
    for name in adapters:
        task = _task(model, name, args)
        own = dict(task.generation_kwargs) if task is not None else {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
        if args.max_new_tokens is not None:
            own["max_new_tokens"] = args.max_new_tokens
        settings[name] = own
    distinct = {json.dumps(s, sort_keys=True) for s in settings.values()}
    if len(distinct) > 1:
        raise ValueError(
            f"The adapters' tasks generate with different settings ({settings}); one mixed batch needs one. "
            "Pass --task (and --max_new_tokens) to choose, or run predict once per adapter."
        )
    return next(iter(settings.values()))


def _model_input(model, name: str, text: str, args) -> str:
    from peft_hybrid.inference import input_texts

    task = _task(model, name, args)
    if task is not None:
        mode = model.adapters[name].mode
        return input_texts(
            task, [{"source": text}], mode, use_task_tags=args.use_task_tags, task_prefix=args.task_prefix
        )[0]
    return text if args.task_prefix is None else args.task_prefix + text
