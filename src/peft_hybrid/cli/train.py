"""``peft-hybrid train``: the recipes' training run from the command line.

Takes exactly the arguments of ``recipes/<task>.py`` (``--task`` picks the task), including
``--config recipes/configs/<task>.yaml``; ``peft-hybrid train --help`` lists them all.

Example::

    peft-hybrid train --task sst2 --config recipes/configs/sst2.yaml --model_preset tiny \\
        --train_file train.tsv --validation_file dev.tsv --output_dir runs/sst2 --use_cpu true
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    # Everything after "train" goes to the recipe's own parser: a prefix character no argument
    # uses keeps argparse from reading "--task" and friends here.
    parser = subparsers.add_parser(
        "train", help="train an adapter on a task (the recipes' logic)", add_help=False, prefix_chars="+"
    )
    parser.add_argument("recipe_args", nargs="*", help="the recipe's arguments (see peft-hybrid train --help)")
    return parser


def run(args: argparse.Namespace) -> int:
    from peft_hybrid.training.recipe import run as run_recipe

    return run_recipe(args.recipe_args, prog="peft-hybrid train")
