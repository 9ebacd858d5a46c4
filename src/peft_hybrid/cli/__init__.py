"""The ``peft-hybrid`` command line.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``peft-hybrid --help`` is quick.

Exit codes: 0 success, 1 the work failed (a clear message on stderr; every
`peft_hybrid.hub.errors.HubError`), 2 bad arguments or input; the one table is
`peft_hybrid.cli.errors`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("peft_hybrid.cli.train", "train an adapter on a task (the recipes' logic)"),
    "evaluate": ("peft_hybrid.cli.evaluate", "evaluate an adapter on a split: metrics JSON + predictions"),
    "predict": ("peft_hybrid.cli.predict", "batched generation from a file or stdin"),
    "ablate": ("peft_hybrid.cli.ablate", "run the none/prompt/lora/hybrid ablation on one task"),
    "demo": ("peft_hybrid.cli.demo", "the offline end-to-end demo on a tiny model"),
    "push": ("peft_hybrid.cli.push", "push a saved adapter folder to the Hub"),
    "attribute": ("peft_hybrid.cli.attribute", "Integrated Gradients heatmap for one input"),
    "serve": ("peft_hybrid.cli.serve", "serve adapters over a TGI-compatible HTTP API with cross-task batching"),
}


def make_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-hybrid", description="Hybrid LoRA + soft prompt tuning for T5-family models."
    )
    from peft_hybrid import __version__

    parser.add_argument("--version", action="version", version=f"peft-hybrid {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser(argv)
    args = parser.parse_args(argv)
    from peft_hybrid.cli.errors import EXIT_USAGE, report_failures

    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[args.command][0])
    return report_failures(f"peft-hybrid {args.command}", lambda: module.run(args))


if __name__ == "__main__":
    sys.exit(main())
