"""``peft-hybrid evaluate``: score a saved adapter on a task split; metrics JSON + predictions JSONL.

Inputs are formatted and generation runs as in the adapter's training run (its prefix, task tags,
input length and generation settings, saved in ``hybrid_config.json``), in batches, with a progress
bar; a flag given overrides the saved value.

Example::

    peft-hybrid evaluate --adapter runs/sst2 --task sst2 --split validation \\
        --data_file dev.tsv --out runs/sst2/eval
    # -> runs/sst2/eval/metrics.json, runs/sst2/eval/predictions.jsonl
"""

from __future__ import annotations

import argparse
import json

from peft_hybrid.cli._inference_args import (
    add_adapter_arguments,
    add_model_arguments,
    check_positive,
    load_from_args,
)

METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.jsonl"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate an adapter on a split: metrics JSON + predictions",
        description=(
            "Generate for every example of a task split with a saved adapter and score it with the task's metric."
        ),
    )
    add_adapter_arguments(parser)
    parser.add_argument("--task", default=None, help="task name; default: the task the adapter was trained for")
    parser.add_argument(
        "--split",
        default="validation",
        choices=("train", "validation", "test"),
        help="split to score (default: validation)",
    )
    data = parser.add_argument_group("data (default: the task's Hub dataset)")
    data.add_argument(
        "--data_file", "--data-file", default=None, help="local file of the split in the benchmark's original format"
    )
    data.add_argument(
        "--tables_file", "--tables-file", default=None, help="WikiSQL: the *.tables.jsonl for --data_file"
    )
    data.add_argument("--dataset_id", "--dataset-id", default=None, help="Hub dataset id overriding the task's")
    data.add_argument("--dataset_revision", "--dataset-revision", default=None, help="revision of the Hub dataset")
    data.add_argument(
        "--max_eval_samples", "--max-eval-samples", type=int, default=None, help="score only the first N examples"
    )
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help=f"output folder for {METRICS_NAME} and {PREDICTIONS_NAME}")
    return parser


def resolve_task(name: str | None, model) -> object:
    """The task named on the command line, else the one recorded in the adapter config."""
    from peft_hybrid.tasks import get_task

    name = name or model.hybrid_config.task
    if not name:
        raise ValueError("the adapter config records no task: pass --task (e.g. samsum, wikisql, sst2).")
    return get_task(name)


def run(args: argparse.Namespace) -> int:
    from peft_hybrid.hub.access import require_hub
    from peft_hybrid.inference import evaluate_rows
    from peft_hybrid.serialization import atomic_write_bytes
    from peft_hybrid.training.run_folder import require_writable_dir

    for name in ("batch_size", "max_new_tokens", "num_beams", "max_source_length", "max_eval_samples"):
        check_positive(name, getattr(args, name))
    # Before any generation: a place that cannot be written would otherwise fail after all of it.
    out = require_writable_dir(args.out, "--out")
    model, tokenizer = load_from_args(args, args.adapter)
    task = resolve_task(args.task, model)
    if args.data_file is None:
        repo = args.dataset_id or task.hub_dataset.id
        require_hub(f"the {task.name} dataset {repo!r}", repo, repo_type="dataset", revision=args.dataset_revision)
    rows = task.load(
        args.split,
        data_file=args.data_file,
        tables_file=args.tables_file,
        dataset_id=args.dataset_id,
        revision=args.dataset_revision,
    )
    if args.max_eval_samples is not None and args.max_eval_samples < len(rows):
        rows = rows.select(range(args.max_eval_samples))
    metrics, predictions = evaluate_rows(
        model,
        tokenizer,
        task,
        rows,
        batch_size=args.batch_size,
        max_source_length=args.max_source_length,
        use_task_tags=args.use_task_tags,
        task_prefix=args.task_prefix,
        progress=not args.no_progress,
        fast=args.fast,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
    )
    report = {
        "adapter": str(args.adapter),
        "task": task.name,
        "split": args.split,
        "data_file": args.data_file,
        "examples": len(predictions),
        "mode": model.hybrid_config.mode,
        "metrics": metrics,
    }
    atomic_write_bytes(out / METRICS_NAME, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in predictions)
    atomic_write_bytes(out / PREDICTIONS_NAME, lines.encode("utf-8"))
    print(
        json.dumps({"task": task.name, "split": args.split, "examples": len(predictions), **metrics}, sort_keys=True)
    )
    return 0
