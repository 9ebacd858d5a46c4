"""Arguments shared by the commands that load a saved adapter (evaluate, predict, attribute; serves ``--device``)."""

from __future__ import annotations

import argparse
from typing import Any

from peft_hybrid.modeling.quantization import COMPUTE_DTYPES, QUANTIZE_CHOICES


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    """``--adapter`` (folder or Hub id) and its ``--revision``."""
    parser.add_argument(
        "--adapter",
        required=True,
        help="adapter folder (a training run's output_dir) or Hub repo id; owner/name:SUB for one of several",
    )
    parser.add_argument("--revision", default=None, help="revision of --adapter on the Hub")
    add_subfolder_argument(parser)


def add_subfolder_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subfolder", default=None, help="the adapter's subfolder in a folder or repo of several (or owner/name:SUB)"
    )


def add_base_arguments(parser: argparse.ArgumentParser) -> None:
    """``--base`` or ``--model_preset``: a base other than the one the adapter config names."""
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--base", default=None, help="base model id or folder (default: the one in the adapter config)")
    base.add_argument(
        "--model_preset", "--model-preset", default=None, help="random offline base: tiny, flan-t5-small, flan-t5-base"
    )


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quantize`` (TGI's values) and the 4-bit compute dtype: load the base quantized with bitsandbytes."""
    parser.add_argument(
        "--quantize",
        default=None,
        choices=QUANTIZE_CHOICES,
        help="load the base quantized: bitsandbytes-nf4 / bitsandbytes-fp4 (4-bit) or bitsandbytes (8-bit); "
        "needs the quantize extra",
    )
    parser.add_argument(
        "--bnb_4bit_compute_dtype",
        "--bnb-4bit-compute-dtype",
        default=None,
        choices=COMPUTE_DTYPES,
        help="matmul dtype of the 4-bit layers (default float32)",
    )


def quantization_config(args: argparse.Namespace) -> Any:
    """The ``BitsAndBytesConfig`` that ``--quantize`` asks for, or ``None`` (a refusal names the flag)."""
    from peft_hybrid.modeling.quantization import bnb_config

    if args.quantize is None:
        if args.bnb_4bit_compute_dtype is not None:
            raise ValueError("--bnb_4bit_compute_dtype applies to a 4-bit base; add --quantize bitsandbytes-nf4.")
        return None
    return bnb_config(args.quantize, compute_dtype=args.bnb_4bit_compute_dtype)


def load_from_args(args: argparse.Namespace, adapter: str, **extra: Any) -> tuple[Any, Any]:
    """`peft_hybrid.inference.load_for_inference` with the shared flags: base, revision, device, quantization."""
    from peft_hybrid import inference

    quantization = quantization_config(args) if hasattr(args, "quantize") else None
    return inference.load_for_inference(
        adapter,
        base=args.base,
        preset=args.model_preset,
        revision=args.revision,
        device=args.device,
        quantization_config=quantization,
        subfolder=args.subfolder,
        **extra,
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", type=device_argument, default=None, help="torch device (default: cuda if available, else cpu)"
    )


def device_argument(value: str) -> str:
    """``--device``: a device this torch has, else an argparse error (exit 2) naming those that exist."""
    import torch

    present = ["cpu"]
    if torch.cuda.is_available():
        present += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        present.append("mps")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        device = None
    fits = device is not None and (
        device.type == "cpu"
        or (device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count())
        or (device.type == "mps" and "mps" in present and not device.index)
    )
    if not fits:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device this machine's torch has; use one of {present}.")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Base override (``--base``/``--model_preset``, ``--quantize``), batching, generation cap, input prefix,
    device, progress."""
    add_base_arguments(parser)
    add_quantize_arguments(parser)
    parser.add_argument(
        "--batch_size", "--batch-size", type=int, default=16, help="examples per generation batch (default 16)"
    )
    # Every default below is "what the adapter's run used" (saved in its hybrid_config.json).
    parser.add_argument(
        "--max_new_tokens", "--max-new-tokens", type=int, default=None, help="generation cap (default: the run's)"
    )
    parser.add_argument(
        "--num_beams", "--num-beams", type=int, default=None, help="beam search width (default: the run's)"
    )
    parser.add_argument(
        "--max_source_length",
        "--max-source-length",
        type=int,
        default=None,
        help="input tokens kept (default: the run's, else 512)",
    )
    tags = parser.add_mutually_exclusive_group()
    tags.add_argument(
        "--use_task_tags",
        "--use-task-tags",
        action="store_true",
        default=None,
        help="prepend the task tag (default: as the run did; without a record, only for mode full)",
    )
    tags.add_argument(
        "--task_prefix", "--task-prefix", default=None, help="input prefix (default: the run's prefix or tag rule)"
    )
    add_device_argument(parser)
    parser.add_argument(
        "--fast", action="store_true", help="static KV cache + compiled decoding: same outputs, compiles once first"
    )
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar on stderr")


def check_positive(name: str, value: int | None) -> None:
    """Refuse a zero or negative count given as ``--<name>``."""
    if value is not None and value <= 0:
        raise ValueError(f"--{name} {value}: pass a positive number.")
