"""The data of a recipe run: which splits it uses (local files or the task's Hub dataset), and loading,
cutting, formatting and tokenizing each of them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from peft_hybrid.config import HybridConfig
from peft_hybrid.hub.errors import OFFLINE_HINT, HubUnreachableError
from peft_hybrid.training.arguments import HybridTrainingArguments

if TYPE_CHECKING:
    from peft_hybrid.training.recipe import ScriptArguments

logger = logging.getLogger(__name__)


def wanted_splits(
    script_args: ScriptArguments, training_args: HybridTrainingArguments, hybrid_config: HybridConfig
) -> dict[str, str | None]:
    """Split -> local file (``None``: the task's Hub dataset); checks the Hub before anything loads."""
    from peft_hybrid.hub.access import require_hub
    from peft_hybrid.tasks import get_task

    task = get_task(training_args.task)
    if script_args.uses_local_data:
        files = {
            "train": script_args.train_file,
            "validation": script_args.validation_file,
            "test": script_args.test_file,
        }
        wanted = {split: file for split, file in files.items() if file}
    else:
        repo = script_args.dataset_id or task.hub_dataset.id
        require_hub(
            f"the {task.name} dataset {repo!r}", repo, repo_type="dataset", revision=script_args.dataset_revision
        )
        wanted = {split: None for split in ("train", "validation", "test") if split in task.hub_dataset.splits}
    if hybrid_config.has_trainable_parameters and "train" not in wanted:
        raise ValueError(
            f"mode {hybrid_config.mode!r} trains an adapter: pass --train_file "
            "(validation/test files alone only evaluate, with --mode none)."
        )
    if "validation" not in wanted and training_args.eval_strategy != "no":
        raise ValueError(
            "No validation data for evaluation and model selection: pass --validation_file, or train without it "
            "with --eval_strategy no --load_best_model_at_end false --early_stopping_patience 0."
        )
    if not script_args.model_preset:
        require_hub(
            f"--model_name_or_path {script_args.model_name_or_path!r}",
            script_args.model_name_or_path,
            revision=script_args.model_revision,
        )
    return wanted


def load_splits(
    wanted: dict[str, str | None],
    script_args: ScriptArguments,
    training_args: HybridTrainingArguments,
    hybrid_config: HybridConfig,
    tokenizer: Any,
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """Load, cut, format and tokenize each split; evaluation splits keep the task's columns for scoring."""
    import datasets

    from peft_hybrid.tasks import get_task
    from peft_hybrid.training.data import tokenize_dataset

    task = get_task(training_args.task)
    use_tags = script_args.use_task_tags if script_args.use_task_tags is not None else hybrid_config.uses_task_tags
    splits: dict[str, Any] = {}
    stats: dict[str, dict[str, int]] = {}
    for split, file in wanted.items():
        rows = _load_split(task, split, file, script_args)
        limit = script_args.max_train_samples if split == "train" else script_args.max_eval_samples
        if limit is not None and limit < len(rows):
            rows = rows.select(range(limit))
        formatted = task.format_dataset(rows, use_tags, script_args.task_prefix)
        tokenized, stats[split] = tokenize_dataset(
            formatted, tokenizer, training_args.max_source_length, training_args.max_target_length
        )
        if stats[split]["truncated_sources"] or stats[split]["truncated_targets"]:
            logger.warning(
                "%s %s: truncated %d of %d inputs to %d tokens and %d targets to %d tokens.",
                task.name,
                split,
                stats[split]["truncated_sources"],
                stats[split]["examples"],
                training_args.max_source_length,
                stats[split]["truncated_targets"],
                training_args.max_target_length,
            )
        # The metric scores generated text against the task rows, so evaluation sets keep them.
        splits[split] = (
            tokenized if split == "train" else datasets.concatenate_datasets([formatted, tokenized], axis=1)
        )
    logger.info("data: %s", stats)
    return splits, stats


def _load_split(task: Any, split: str, file: str | None, script_args: ScriptArguments) -> Any:
    from peft_hybrid.hub.access import hub_offline

    if file is not None:
        return task.load(split, data_file=file, tables_file=script_args.tables_file)
    try:
        return task.load(split, dataset_id=script_args.dataset_id, revision=script_args.dataset_revision)
    except OSError as err:  # datasets' own offline failure: not in its cache
        if not hub_offline():
            raise
        raise HubUnreachableError(
            f"the {task.name} dataset is not in the local cache and HF_HUB_OFFLINE=1 ({err}). {OFFLINE_HINT}"
        ) from None
