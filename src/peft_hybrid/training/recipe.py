"""The training recipe behind ``recipes/*.py`` and ``peft-hybrid train``: parse, load, train, evaluate, save.

Three argument groups, parsed by one `transformers.HfArgumentParser`:

- `ScriptArguments`: the data (Hub dataset or local files in the benchmark's original format)
  and the base model (Hub id, folder, or an offline ``--model_preset``);
- `AdapterArguments`: the `HybridConfig` fields (``mode``, ``r``, ``lora_alpha``, ...), generated
  from `HybridConfig` itself; its ``seed`` is the training seed and its provenance fields are
  filled from the script arguments;
- `HybridTrainingArguments`: the Trainer's arguments with the paper's defaults, including
  ``task``.

``--config file.yaml`` gives defaults for any of them; the command line wins.

Example:
    >>> from peft_hybrid.offline.synthetic import sentiment_sentences, write_sst2_tsv
    >>> from peft_hybrid.training.recipe import parse_args
    >>> rows = sentiment_sentences(8, seed=0)
    >>> train, dev = write_sst2_tsv("train.tsv", rows[:4]), write_sst2_tsv("dev.tsv", rows[4:])
    >>> script_args, hybrid_config, training_args = parse_args(
    ...     ["--model_preset", "tiny", "--mode", "lora", "--train_file", "train.tsv", "--validation_file", "dev.tsv",
    ...      "--max_steps", "2", "--output_dir", "runs/sst2", "--use_cpu", "true", "--disable_tqdm", "true"],
    ...     task="sst2")
    >>> hybrid_config.mode, training_args.metric_for_best_model
    ('lora', 'accuracy')
    >>> summary = main(script_args, hybrid_config, training_args)  # the Trainer prints its logs
    {'eval_loss': ...}
    >>> sorted(p.name for p in Path("runs/sst2").glob("adapter_*"))
    ['adapter_model.safetensors']
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_hybrid.config import HybridConfig, InferenceSettings
from peft_hybrid.hub.errors import HubError
from peft_hybrid.modeling.quantization import QuantizationArguments
from peft_hybrid.modeling.serialization import DISK_ERRORS, SaveError, save_failure
from peft_hybrid.training import config_file
from peft_hybrid.training.trainer import HybridTrainingArguments

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "google/flan-t5-base"
RESULTS_NAME = "results.json"
# Filled from the script/training arguments, not set by hand on the command line.
_DERIVED_CONFIG_FIELDS = (
    "seed",
    "task",
    "base_model_name_or_path",
    "revision",
    "base_model_shape",
    "base_quantization",
    "inference",
)


@dataclass
class ScriptArguments(QuantizationArguments):
    """Data and base-model arguments of the recipes (the task itself is ``--task``).

    The base's quantization takes TRL's argument names (`QuantizationArguments`: ``--load_in_4bit``,
    ``--load_in_8bit``, ``--bnb_4bit_quant_type``, ``--use_bnb_nested_quant``, ``--bnb_4bit_compute_dtype``).

    Example:
        >>> ScriptArguments(model_preset="tiny").model_preset
        'tiny'
    """

    # Data: the task's Hub dataset, or local files in the benchmark's original format
    dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset id overriding the task's (a mirror)."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of the Hub dataset."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training file (e.g. SAMSum .csv/.json, SST-2 .tsv, WikiSQL .jsonl)."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local validation file (model selection and reporting)."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Local test file, scored once after training."})
    tables_file: str | None = field(
        default=None, metadata={"help": "WikiSQL: a *.tables.jsonl holding the tables of every split given."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation/test examples."}
    )
    # Inputs
    use_task_tags: bool | None = field(
        default=None,
        metadata={"help": "Prepend the task's hand-written tag; default: only in mode 'full' (as in the paper)."},
    )
    task_prefix: str | None = field(default=None, metadata={"help": "Explicit input prefix replacing the task tag."})
    # Base model
    model_name_or_path: str = field(default=DEFAULT_MODEL, metadata={"help": "Base model: Hub id or local folder."})
    model_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of the base model."})
    model_preset: str | None = field(
        default=None,
        metadata={
            "help": "Random-weight offline base instead of model_name_or_path: tiny, flan-t5-small, flan-t5-base."
        },
    )
    # The run folder (transformers 5 dropped this TrainingArguments field; the recipe keeps its meaning)
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output_dir that holds another run (its same-named files are replaced)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        local = [self.train_file, self.validation_file, self.test_file]
        if self.dataset_id is not None and any(local):
            raise ValueError(
                "dataset_id and local files (train_file/validation_file/test_file) exclude each other; "
                "pass either a Hub dataset or local files."
            )
        if self.tables_file is not None and not any(local):
            raise ValueError("tables_file applies to local WikiSQL files; pass train_file/validation_file with it.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value}: pass a positive number of examples, or leave it unset for all.")
        if self.model_preset is not None:
            from peft_hybrid.offline import PRESETS

            if self.model_preset not in PRESETS:
                raise ValueError(f"model_preset={self.model_preset!r} is unknown; choose one of {', '.join(PRESETS)}.")

    @property
    def uses_local_data(self) -> bool:
        return any([self.train_file, self.validation_file, self.test_file])


def _adapter_arguments() -> type:
    """A dataclass with `HybridConfig`'s user-facing fields (same types, defaults and help)."""
    specs = []
    for f in dataclasses.fields(HybridConfig):
        if f.name in _DERIVED_CONFIG_FIELDS:
            continue
        specs.append(
            (f.name, f.type, field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))
        )
    adapter_arguments = dataclasses.make_dataclass("AdapterArguments", specs)
    adapter_arguments.__module__ = __name__
    adapter_arguments.__doc__ = "The user-facing fields of `HybridConfig`, for the recipes' argument parser."
    return adapter_arguments


AdapterArguments = _adapter_arguments()


def make_parser(task: str | None = None, prog: str | None = None):
    """The recipes' `HfArgumentParser` over (ScriptArguments, AdapterArguments, HybridTrainingArguments).

    With ``task`` (what ``recipes/<task>.py`` passes) ``--task`` defaults to it and another
    value is refused by `parse_args`.

    Example:
        >>> make_parser("sst2").parse_args(["--output_dir", "out"]).task
        'sst2'
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ScriptArguments, AdapterArguments, HybridTrainingArguments), prog=prog)
    parser.add_argument(
        "--config", default=None, help="YAML file of argument defaults; the command line overrides it."
    )
    if task is not None:
        parser.set_defaults(task=task)
    return parser


def parse_args(
    argv: Sequence[str] | None = None, task: str | None = None, prog: str | None = None
) -> tuple[ScriptArguments, HybridConfig, HybridTrainingArguments]:
    """Parse ``argv`` (YAML ``--config`` defaults, command line wins) into the recipe's three objects.

    Raises ValueError naming the file and key for invalid YAML or unknown keys, and for
    inconsistent arguments (e.g. ``--mode lora --r 0``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(task, prog=prog)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    origins: dict[str, str] = {}
    if known.config is not None:
        defaults, origins = config_file.read_yaml_config(known.config, parser, parser.dataclass_types)
        parser.set_defaults(**defaults)
        # The command line wins: a value given there did not come from the file.
        origins = {
            dest: origin
            for dest, origin in origins.items()
            if not any(a.dest == dest and config_file.given_on_command_line(a, argv) for a in parser._actions)
        }
    config_file.check_ranges(parser.parse_args(argv), parser.dataclass_types, origins)
    try:
        script_args, adapter_args, training_args, _ = parser.parse_args_into_dataclasses(
            argv, return_remaining_strings=False, look_for_args_file=False
        )
        hybrid_config = build_hybrid_config(adapter_args, script_args, training_args)
    except ValueError as err:
        raise ValueError(config_file.with_origin(str(err), origins)) from None
    if task is not None and training_args.task != task:
        raise ValueError(
            f"this recipe trains task {task!r}; --task {training_args.task!r} belongs to "
            f"recipes/{training_args.task}.py."
        )
    return script_args, hybrid_config, training_args


def build_hybrid_config(
    adapter_args: Any, script_args: ScriptArguments, training_args: HybridTrainingArguments
) -> HybridConfig:
    """The `HybridConfig` of a run: adapter fields, seed, task and input formatting (the base is recorded
    when the model is built; the trainer adds the lengths and generation settings it evaluates with)."""
    fields = dataclasses.asdict(adapter_args)
    inference = InferenceSettings(task_prefix=script_args.task_prefix, use_task_tags=script_args.use_task_tags)
    # The base is recorded by HybridModel from what the resolver loaded (a Hub base with its commit).
    return HybridConfig(**fields, seed=training_args.seed, task=training_args.task, inference=inference)


def main(
    script_args: ScriptArguments, hybrid_config: HybridConfig, training_args: HybridTrainingArguments
) -> dict[str, Any]:
    """Train an adapter on ``training_args.task``, evaluate it, save the best one to ``output_dir``.

    Mode ``none`` trains nothing and reports the base model's scores (the ablation's baseline).

    Returns:
        ``{"task", "mode", "output_dir", "adapter_dir", "world_size", "trainable_params", "total_params",
        "data": {split: token statistics}, "train": metrics, "eval": metrics, "test": metrics,
        "best_checkpoint"}`` (``test`` only with test data); also written as ``results.json``.

    The run holds ``output_dir`` throughout (`peft_hybrid.training.run_folder.claim_run_folder`).
    """
    from peft_hybrid.training.run_folder import claim_run_folder, recipe_manifest

    with claim_run_folder(
        training_args.output_dir,
        recipe_manifest(script_args, hybrid_config),
        overwrite=script_args.overwrite_output_dir,
        resume_from_checkpoint=training_args.resume_from_checkpoint if hybrid_config.mode != "none" else None,
        enabled=training_args.should_save,
    ):
        return _train_in_folder(script_args, hybrid_config, training_args)


def _train_in_folder(
    script_args: ScriptArguments, hybrid_config: HybridConfig, training_args: HybridTrainingArguments
) -> dict[str, Any]:
    from peft_hybrid.modeling.loading import load_base
    from peft_hybrid.modeling.model import HybridModel
    from peft_hybrid.modeling.serialization import atomic_write_bytes
    from peft_hybrid.training.data import Seq2SeqCollator
    from peft_hybrid.training.splits import load_splits, wanted_splits
    from peft_hybrid.training.trainer import HybridTrainer

    if not training_args.task:
        raise ValueError("No task: pass --task (one of the registered tasks, e.g. samsum, wikisql, sst2).")
    wanted = wanted_splits(script_args, training_args, hybrid_config)
    base, tokenizer = load_base(
        script_args.model_name_or_path,
        revision=script_args.model_revision,
        preset=script_args.model_preset,
        quantization_config=script_args.quantization_config(),
    )
    splits, data_stats = load_splits(wanted, script_args, training_args, hybrid_config, tokenizer)
    model = HybridModel(base, hybrid_config, tokenizer=tokenizer)
    trainer = HybridTrainer(
        model,
        training_args,
        train_dataset=splits.get("train"),
        eval_dataset=splits.get("validation"),
        processing_class=tokenizer,
        data_collator=Seq2SeqCollator(tokenizer),
    )
    if script_args.uses_local_data:
        # The card must not claim the Hub benchmark for metrics measured on the user's files.
        names = [
            Path(f).name for f in (script_args.train_file, script_args.validation_file, script_args.test_file) if f
        ]
        trainer.card_dataset = {
            "id": "local",
            "name": f"local {training_args.task} files ({', '.join(names)})",
            "revision": None,
        }
    summary: dict[str, Any] = {
        "task": training_args.task,
        "mode": hybrid_config.mode,
        "output_dir": str(training_args.output_dir),
        "world_size": training_args.world_size,
        "trainable_params": model.num_parameters(trainable_only=True),
        "total_params": model.num_parameters(),
        "data": data_stats,
    }
    if hybrid_config.has_trainable_parameters:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        summary["train"] = dict(result.metrics)
        summary["best_checkpoint"] = trainer.state.best_model_checkpoint
    if "validation" in splits:
        summary["eval"] = trainer.evaluate(metric_key_prefix="eval")
    if "test" in splits:
        summary["test"] = trainer.predict(splits["test"], metric_key_prefix="test").metrics
    trainer.save_model(training_args.output_dir)
    summary["adapter_dir"] = str(training_args.output_dir)
    if trainer.is_world_process_zero():
        path = Path(training_args.output_dir) / RESULTS_NAME
        atomic_write_bytes(path, (json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n").encode())
    _end_distributed()
    return summary


def _end_distributed() -> None:
    """Tear the process group down so multi-process runs exit cleanly instead of aborting."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run(argv: Sequence[str] | None = None, task: str | None = None, prog: str | None = None) -> int:
    """Parse ``argv``, run `main`, and turn failures into one-line messages and exit codes.

    Exit codes: 0 done, 1 a Hub failure (any `peft_hybrid.hub.errors.HubError`) or a full/read-only disk,
    2 bad arguments or input.
    This is what ``recipes/<task>.py`` and ``peft-hybrid train`` run.
    """
    prog = prog or (f"recipes/{task}.py" if task else "recipe")
    try:
        script_args, hybrid_config, training_args = parse_args(argv, task=task, prog=prog)
        summary = main(script_args, hybrid_config, training_args)
    except HubError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:  # a full or read-only disk; the Trainer's own files (optimizer state) too
        if not isinstance(err, SaveError) and err.errno not in DISK_ERRORS:
            raise
        message = err if isinstance(err, SaveError) else save_failure(err.filename or "the run folder", err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    metrics = {k: v for k, v in (summary.get("eval") or {}).items() if not k.endswith(("_runtime", "_per_second"))}
    logger.info("%s: adapter saved to %s; validation %s", prog, summary["adapter_dir"], metrics)
    return 0
