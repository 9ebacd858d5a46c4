"""Hybrid LoRA + soft prompt tuning of FLAN-T5-base on WikiSQL text-to-SQL (logical-form accuracy).

The paper's recipe (recipes/configs/wikisql.yaml); any argument can be overridden on the command line.

Launch on one or more GPUs (data parallel; FSDP and DeepSpeed are refused, see recipes/README.md)::

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/wikisql.py \
        --config recipes/configs/wikisql.yaml --output_dir runs/wikisql-hybrid

or in one process: ``python recipes/wikisql.py --config recipes/configs/wikisql.yaml
--output_dir runs/wikisql-hybrid``.
Local files in the benchmark's original format instead of the Hub dataset::

    python recipes/wikisql.py --config recipes/configs/wikisql.yaml --output_dir runs/wikisql-hybrid \
        --train_file data/wikisql/train.jsonl --validation_file data/wikisql/dev.jsonl \
        --tables_file data/wikisql/all.tables.jsonl

A quick offline run on a random tiny model::

    python recipes/wikisql.py --config recipes/configs/wikisql.yaml --model_preset tiny --use_cpu true \
        --bf16 false --max_steps 20 --output_dir runs/wikisql-tiny --train_file data/wikisql/train.jsonl \
        --validation_file data/wikisql/dev.jsonl --tables_file data/wikisql/all.tables.jsonl
"""

from __future__ import annotations

import sys
from typing import Any

from peft_hybrid.cli.train import run_recipe
from peft_hybrid.config import HybridConfig
from peft_hybrid.training import recipe
from peft_hybrid.training.recipe import ScriptArguments
from peft_hybrid.training.trainer import HybridTrainingArguments

TASK = "wikisql"


def make_parser():
    """The recipe's argument parser, with ``--task wikisql`` fixed."""
    return recipe.make_parser(task=TASK)


def main(
    script_args: ScriptArguments, hybrid_config: HybridConfig, training_args: HybridTrainingArguments
) -> dict[str, Any]:
    """Train, evaluate and save the adapter; returns the run summary (see ``peft_hybrid.training.recipe.main``)."""
    return recipe.main(script_args, hybrid_config, training_args)


if __name__ == "__main__":
    sys.exit(run_recipe(sys.argv[1:], task=TASK))
