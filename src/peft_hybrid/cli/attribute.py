"""``peft-hybrid attribute``: Integrated Gradients heatmap of an adapter's output for one input.

    peft-hybrid attribute --adapter my-samsum-adapter --task samsum \\
        --text "Amy: Are we still on for 5?\\r\\nBob: Yes, see you at the cafe." \\
        --n-steps 50 --out attribution/ --add-to-card

Writes ``attribution.json`` (raw scores, token strings, completeness gaps) and
``heatmap.png`` (plus ``heatmap-2.png``, ... with ``--max-rows``) into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from peft_hybrid.cli._inference_args import (
    add_adapter_arguments,
    add_base_arguments,
    add_device_argument,
    load_from_args,
)
from peft_hybrid.interpret.attribution import BASELINES, attribute
from peft_hybrid.interpret.heatmap import NORMALIZE, add_heatmap_to_card, save_heatmaps


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``attribute`` subcommand on an ``argparse`` subparsers object.

    The subcommand's ``func`` default is `run`, so a dispatcher calls ``args.func(args)``.

    Example:
        >>> parser = argparse.ArgumentParser(prog="peft-hybrid")
        >>> add_parser(parser.add_subparsers(dest="command"))   # doctest: +ELLIPSIS
        ArgumentParser(prog='peft-hybrid attribute', ...)
    """
    parser = subparsers.add_parser(
        "attribute",
        help="Integrated Gradients heatmap: input tokens x generated tokens",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("model")
    add_adapter_arguments(source)
    add_base_arguments(source)
    add_device_argument(source)
    inputs = parser.add_argument_group("input and output text")
    inputs.add_argument("--text", required=True, help="Input text to explain.")
    inputs.add_argument(
        "--task",
        default=None,
        help="Task whose input formatting and generation settings to use (default: the adapter's run's).",
    )
    inputs.add_argument("--target", default=None, help="Explain this output text instead of the greedy generation.")
    inputs.add_argument(
        "--max-new-tokens", type=int, default=None, help="Generation length limit (default: the run's, else 64)."
    )
    ig = parser.add_argument_group("integrated gradients")
    ig.add_argument("--n-steps", type=int, default=50, help="Integration steps (Gauss-Legendre).")
    ig.add_argument(
        "--baseline", choices=BASELINES, default="pad", help="Baseline embedding for every row, soft prompt included."
    )
    ig.add_argument(
        "--internal-batch-size",
        type=int,
        default=None,
        help="Interpolation steps per forward pass (lower to save memory).",
    )
    plot = parser.add_argument_group("heatmap")
    plot.add_argument("--out", default="attribution", help="Output folder for attribution.json and heatmap.png.")
    plot.add_argument("--aggregate-prompt", action="store_true", help="Show the soft prompt as one summed row.")
    plot.add_argument("--max-rows", type=int, default=None, help="Rows per PNG; longer inputs are split into pages.")
    plot.add_argument(
        "--normalize", choices=NORMALIZE, default="none", help="Colour scale: raw scores, or per-column max."
    )
    plot.add_argument("--add-to-card", action="store_true", help="Add the heatmap to the adapter folder's README.md.")
    plot.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")


def run(args: argparse.Namespace) -> int:
    """Run the attribution described by parsed ``args``; returns the exit status (0 on success)."""
    from peft_hybrid.inference import generation_settings, model_inputs

    adapter_dir = Path(args.adapter) / args.subfolder if args.subfolder else Path(args.adapter)
    if args.add_to_card and not adapter_dir.is_dir():
        raise ValueError(
            f"--add-to-card writes into a local adapter folder, and {args.adapter!r} is not one; "
            "download it or save it first."
        )
    model, tokenizer = load_from_args(args, args.adapter)

    # As the adapter's run formatted its inputs and generated (saved with it); flags override.
    text = model_inputs(model.hybrid_config, [args.text], task=args.task)[0]
    generation_kwargs = generation_settings(model.hybrid_config, args.task, max_new_tokens=args.max_new_tokens)

    result = attribute(
        model,
        tokenizer,
        text,
        target=args.target,
        n_steps=args.n_steps,
        baseline=args.baseline,
        internal_batch_size=args.internal_batch_size,
        max_new_tokens=generation_kwargs.pop("max_new_tokens", None),
        generation_kwargs=generation_kwargs,
        progress=False if args.no_progress else None,
    )
    out = Path(args.out)
    json_path = result.to_json(out / "attribution.json")
    pngs = save_heatmaps(
        result,
        out / "heatmap.png",
        aggregate_prompt=args.aggregate_prompt,
        max_rows=args.max_rows,
        normalize=args.normalize,
    )
    print(f"output: {result.output_text!r}")
    worst = max(result.relative_errors)
    print(
        f"completeness: largest |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)| = {worst:.2e} "
        f"over {len(result.output_tokens)} tokens"
    )
    if result.num_prompt_tokens:
        share = sum(result.prompt_share) / len(result.prompt_share)
        print(f"soft prompt share of |attribution|: {100 * share:.1f}% on average")
    print(f"wrote {json_path}")
    for png in pngs:
        print(f"wrote {png}")
    if args.add_to_card:
        print(f"updated {add_heatmap_to_card(adapter_dir, pngs[0])}")
    return 0
