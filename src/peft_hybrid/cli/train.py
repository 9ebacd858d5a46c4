"""``peft-hybrid train``: the recipes' training run from the command line.

Takes exactly the arguments of ``recipes/<task>.py`` (``--task`` picks the task), including
``--config recipes/configs/<task>.yaml``; ``peft-hybrid train --help`` lists them all.

Example::

    peft-hybrid train --task sst2 --config recipes/configs/sst2.yaml --model_preset tiny \\
        --train_file train.tsv --validation_file dev.tsv --output_dir runs/sst2 --use_cpu true
"""

from __future__ import annotations

import argparse

from peft_hybrid.cli.errors import EXIT_OK, report_failures


def add_passthrough_parser(subparsers, name: str, dest: str, dest_help: str) -> argparse.ArgumentParser:
    """Subcommand ``name`` whose arguments are all collected unread into ``dest``, for the recipe's
    own parser: a prefix character no argument uses keeps argparse from reading "--task" and friends."""
    from peft_hybrid.cli import COMMANDS

    parser = subparsers.add_parser(name, help=COMMANDS[name][1], add_help=False, prefix_chars="+")
    parser.add_argument(dest, nargs="*", help=dest_help)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return add_passthrough_parser(
        subparsers, "train", "recipe_args", "the recipe's arguments (see peft-hybrid train --help)"
    )


def run(args: argparse.Namespace) -> int:
    from peft_hybrid.training.recipe import run as train

    train(args.recipe_args, prog="peft-hybrid train")
    return EXIT_OK


def run_recipe(argv: list[str] | None = None, task: str | None = None, prog: str | None = None) -> int:
    """What ``recipes/<task>.py`` runs: the recipe with ``--task task``, failures as one line and an exit code.

    Exit codes as every command's (`peft_hybrid.cli.errors`): 0 done, 1 a Hub failure or a full or
    read-only disk, 2 bad arguments or input.
    """
    from peft_hybrid.training.recipe import run as train

    prog = prog or (f"recipes/{task}.py" if task else "recipe")

    def work() -> None:
        train(argv, task=task, prog=prog)

    return report_failures(prog, work)
