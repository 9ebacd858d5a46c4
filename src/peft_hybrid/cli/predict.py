"""``peft-hybrid predict``: batched generation with a saved adapter, one output per input line.

Input (a file or ``-`` for stdin) is plain text, one input per line, or JSON Lines whose objects
carry the text under ``--field`` (default ``text``, else ``source``). Outputs go to stdout, one
per line (line breaks inside an output become spaces), or as JSON Lines with ``--jsonl``; the
progress bar goes to stderr.

Example::

    printf 'it is a charming journey .\\nunflinchingly bleak\\n' | \\
        peft-hybrid predict --adapter runs/sst2 --task sst2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peft_hybrid.cli._inference_args import add_adapter_arguments, add_model_arguments, check_positive

DEFAULT_MAX_NEW_TOKENS = 64


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="batched generation from a file or stdin",
        description=(
            "Generate one output per input with a saved adapter (text or JSON Lines in, one line out per input)."
        ),
    )
    add_adapter_arguments(parser)
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


def read_inputs(source: str, field: str | None = None) -> list[str]:
    """Input texts from a file or ``-`` (stdin): JSON Lines when every line is an object, else lines."""
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
        return [line.rstrip("\r") for _, line in lines]
    texts = []
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
        texts.append(value)
    return texts


def run(args: argparse.Namespace) -> int:
    from peft_hybrid.hub.access import HubUnreachableError
    from peft_hybrid.inference import generate_texts, input_texts, load_for_inference
    from peft_hybrid.tasks import get_task

    for name in ("batch_size", "max_new_tokens", "max_source_length"):
        check_positive(name, getattr(args, name))
    texts = read_inputs(args.input, args.field)
    try:
        model, tokenizer = load_for_inference(
            args.adapter, base=args.base, preset=args.model_preset, revision=args.revision, device=args.device
        )
    except HubUnreachableError as err:
        print(f"peft-hybrid predict: error: {err}", file=sys.stderr)
        return 1
    name = args.task or model.hybrid_config.task
    task = get_task(name) if name else None
    generation = dict(task.generation_kwargs) if task is not None else {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
    if args.max_new_tokens is not None:
        generation["max_new_tokens"] = args.max_new_tokens
    inputs = texts
    if task is not None:
        rows = [{"source": t} for t in texts]
        inputs = input_texts(
            task, rows, model.hybrid_config.mode, use_task_tags=args.use_task_tags, task_prefix=args.task_prefix
        )
    elif args.task_prefix is not None:
        inputs = [args.task_prefix + t for t in texts]
    predictions = generate_texts(
        model,
        tokenizer,
        inputs,
        batch_size=args.batch_size,
        max_source_length=args.max_source_length,
        progress=not args.no_progress,
        fast=args.fast,
        **generation,
    )
    for text, prediction in zip(texts, predictions):
        if args.jsonl:
            sys.stdout.write(json.dumps({"input": text, "prediction": prediction}, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(" ".join(prediction.splitlines()) + "\n")
    sys.stdout.flush()
    return 0
