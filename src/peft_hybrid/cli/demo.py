"""``peft-hybrid demo``: the offline end-to-end demo (pre-train, adapt, evaluate, save, reload).

Needs no network and no GPU; about two minutes on two CPU cores. See `peft_hybrid.offline.demo`.

Example::

    peft-hybrid demo --output-dir demo-out
"""

from __future__ import annotations

import argparse
import logging


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="the offline end-to-end demo on a tiny model",
        description="Pre-train a tiny T5 on synthetic dialogues, train a hybrid LoRA + soft prompt adapter "
        "for summarization, compare ROUGE with the base alone, save, reload and predict. Offline, on CPU.",
    )
    parser.add_argument(
        "--output-dir", "--output_dir", required=True, help="new or empty folder for everything the demo writes"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the whole run; the same seed gives the same numbers (default 0)"
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=300, help="span-corruption pre-training steps (default 300)"
    )
    parser.add_argument("--train-steps", type=int, default=200, help="adapter training steps (default 200)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a tiny model gains little from more, and loses much on a busy machine)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the Hub; fail fast if anything asks
    import torch

    from peft_hybrid.offline.demo import format_summary, run_demo

    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: pass 1 or more.")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_library_bars()
    summary = run_demo(
        args.output_dir,
        seed=args.seed,
        pretrain_steps=args.pretrain_steps,
        train_steps=args.train_steps,
        progress=not args.quiet,
    )
    print(format_summary(summary), end="")
    return 0


def _quiet_library_bars() -> None:
    """Turn off the per-call bars of transformers (loading/writing weights) and datasets (formatting rows).

    On a model this small each finishes at once, several times per stage, and only scrolls the
    demo's own bars (pre-training, training) and its results away.
    """
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
