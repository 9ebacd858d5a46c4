"""``peft-hybrid serve`` (also ``python -m peft_hybrid.serve``): one base, many task adapters, TGI's HTTP API.

Example::

    peft-hybrid serve --base google/flan-t5-base \\
        --adapter samsum=runs/samsum --adapter sst2=me/flan-t5-sst2-hybrid --port 8080

Then ``InferenceClient(base_url="http://127.0.0.1:8080").text_generation(text, adapter_id="samsum")``.
Hub adapters download with the token in HF_TOKEN (or the stored login); it is never logged.
"""

from __future__ import annotations

import argparse
import os
import re

from peft_hybrid.cli._inference_args import add_device_argument
from peft_hybrid.cli.errors import MissingExtraError
from peft_hybrid.modeling.quantization import QUANTIZE_CHOICES

_NAME = re.compile(r"[A-Za-z0-9_-]{1,96}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="serve adapters over a TGI-compatible HTTP API with cross-task batching",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to serve")
    what.add_argument("--base", required=True, help="base model: Hub id, folder, or preset:NAME (e.g. preset:tiny)")
    what.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH_OR_REPO",
        help="an adapter loaded at startup, served as adapter_id NAME (repeatable; owner/name:SUB picks a subfolder)",
    )
    what.add_argument(
        "--lazy-adapters", action="store_true", help="also load adapters named by a request, on first use"
    )
    what.add_argument(
        "--allow-adapter",
        action="append",
        default=[],
        metavar="PATTERN",
        help="Hub ids or folders that /v1/load_lora_adapter (and with --lazy-adapters, a request) may load: "
        "a shell pattern like 'my-org/*' or '/srv/adapters/*', folders matched once resolved (repeatable)",
    )
    what.add_argument("--max-adapters", type=int, default=None, help="adapters kept loaded, LRU (default: no limit)")
    what.add_argument(
        "--quantize",
        default=None,
        choices=QUANTIZE_CHOICES,
        help="load the base quantized (TGI's values): bitsandbytes-nf4, bitsandbytes-fp4 (4-bit; --dtype is then "
        "their compute dtype) or bitsandbytes (8-bit); needs the quantize extra",
    )
    where = parser.add_argument_group("where")
    where.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, this machine only)")
    where.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    where.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the API key; then every route but /health needs 'Bearer <key>'",
    )
    add_device_argument(where)
    where.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    where.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    limits = parser.add_argument_group("batching and limits")
    limits.add_argument(
        "--scheduler",
        default="continuous",
        choices=["continuous", "static"],
        help="continuous: rows join and leave the running batch after every decoder step (default); "
        "static: a batch of requests runs until its longest row ends (for comparison)",
    )
    limits.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="continuous: decode in fixed shapes with a compiled decoder step (CUDA graphs on a GPU); "
        "default on for a GPU (unless --quantize), off on a CPU, where it does not win",
    )
    limits.add_argument("--max-batch-size", type=int, default=32, help="rows per generation batch (default 32)")
    limits.add_argument(
        "--max-batch-total-tokens",
        type=int,
        default=32768,
        help="continuous: input + max new tokens of all rows in flight; a request waits until it fits (32768)",
    )
    limits.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="static: how long a request waits for others to batch with (10)",
    )
    limits.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503 (default 256)")
    limits.add_argument(
        "--max-request-bytes", type=int, default=2**20, help="largest request body; larger ones get 413 (1 MiB)"
    )
    limits.add_argument("--max-input-tokens", type=int, default=512, help="input tokens per request (default 512)")
    limits.add_argument(
        "--max-new-tokens-limit", type=int, default=256, help="largest max_new_tokens a request may ask (256)"
    )


def check(args: argparse.Namespace) -> None:
    """Refuse inconsistent options, naming them; turns ``--adapter`` into ``args.adapters`` (id -> source)."""
    names = (
        "max_batch_size",
        "max_batch_total_tokens",
        "max_queue",
        "max_input_tokens",
        "max_new_tokens_limit",
        "max_adapters",
        "max_request_bytes",
    )
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} {value}: pass a positive number.")
    if args.max_input_tokens + args.max_new_tokens_limit > args.max_batch_total_tokens:
        raise ValueError(
            f"--max-batch-total-tokens {args.max_batch_total_tokens} is less than --max-input-tokens + "
            f"--max-new-tokens-limit ({args.max_input_tokens + args.max_new_tokens_limit}): the largest request "
            "could never run. Raise it or lower the limits."
        )
    if getattr(args, "fast", None) and args.scheduler == "static":
        raise ValueError(
            "--fast compiles the continuous scheduler's decoder step; --scheduler static generates batch by batch. "
            "Drop --fast or use --scheduler continuous."
        )
    if args.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms {args.max_wait_ms}: pass 0 or more.")
    if args.lazy_adapters and not args.allow_adapter:
        raise ValueError("--lazy-adapters needs at least one --allow-adapter PATTERN saying which adapters may load.")
    args.adapters = {}
    for value in args.adapter:
        name, sep, source = value.partition("=")
        if not sep or not source or not _NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(
                f"--adapter {value!r}: expected NAME=PATH_OR_REPO, NAME of letters, digits, '_' and '-' "
                "(not starting with '__')."
            )
        if name in args.adapters:
            raise ValueError(f"--adapter {name!r} is given twice; give each adapter one name.")
        args.adapters[name] = source


def api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_env is None:
        return None
    key = os.environ.get(args.api_key_env)
    if not key:
        raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is unset or empty.")
    return key


def _require_extra() -> None:
    import importlib.util

    missing = [
        m for m in ("fastapi", "uvicorn", "prometheus_client", "outlines_core") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise MissingExtraError(
            f"peft-hybrid serve needs the serve extra: pip install 'peft-hybrid[serve]' (missing: {missing})"
        )


def run(args: argparse.Namespace) -> int:
    import logging

    _require_extra()
    from peft_hybrid.serve.server import bind, build_state, serve

    check(args)
    key = api_key(args)
    sock = bind(args.host, args.port)  # a port in use or a bad host fails before the model loads
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        state = build_state(args, key)
    except BaseException:
        sock.close()
        raise
    return serve(state, sock, args.log_level)
