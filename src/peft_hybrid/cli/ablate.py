"""``peft-hybrid ablate``: the none/prompt/lora/hybrid ablation (the paper's Table 2) on one task.

Takes the recipe's arguments (those of ``peft-hybrid train``: data, base model, budget) plus
``--modes`` and ``--include_full``; every mode runs with the same data, steps/epochs, learning
rate, batch size and seed. Writes ``<output_dir>/ablation.md`` and ``ablation.json`` and each
mode's adapter under ``<output_dir>/<mode>/``.

Example::

    peft-hybrid ablate --task sst2 --model_preset tiny --train_file train.tsv \\
        --validation_file dev.tsv --output_dir runs/ablation --max_steps 200 --use_cpu true
"""

from __future__ import annotations

import argparse
import shlex
import sys

from peft_hybrid.cli.train import add_passthrough_parser


def _own_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-hybrid ablate", add_help=False, allow_abbrev=False)
    parser.add_argument(
        "--modes",
        default="none,prompt,lora,hybrid",
        help="comma-separated rows, in order (default: none,prompt,lora,hybrid)",
    )
    parser.add_argument("--include_full", "--include-full", action="store_true", help="add a full fine-tuning row")
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    # Everything after "ablate" is parsed in run(): ours first, the rest by the recipe's parser.
    return add_passthrough_parser(
        subparsers, "ablate", "ablate_args", "--modes, --include_full and the recipe's arguments"
    )


def run(args: argparse.Namespace) -> int:
    from peft_hybrid.training.ablation import ablation_modes, run_ablation
    from peft_hybrid.training.recipe import make_parser, parse_args

    argv = list(args.ablate_args)
    if "-h" in argv or "--help" in argv:
        _own_parser().print_help()
        print("\nAll other arguments are the recipe's (every mode gets the same ones):\n")
        make_parser(prog="peft-hybrid ablate").print_help()
        return 0
    own, rest = _own_parser().parse_known_args(argv)
    modes = ablation_modes([m.strip() for m in own.modes.split(",") if m.strip()], own.include_full)
    if "--mode" in rest:
        raise ValueError("--mode: the ablation runs every mode in --modes; drop --mode (use --modes none,lora,...).")
    script_args, hybrid_config, training_args = parse_args(rest, prog="peft-hybrid ablate")
    if not training_args.task:
        raise ValueError("--task is required: the task whose metrics the table reports (e.g. sst2, samsum, wikisql).")
    result = run_ablation(
        script_args, hybrid_config, training_args, modes=modes, command="peft-hybrid ablate " + shlex.join(argv)
    )
    print(result.markdown(), end="")
    print(f"table and adapters in {training_args.output_dir}", file=sys.stderr)
    return 0
