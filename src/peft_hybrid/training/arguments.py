"""`HybridTrainingArguments`: ``Seq2SeqTrainingArguments`` with the paper's recipe as defaults.

Example:
    >>> from peft_hybrid import HybridTrainingArguments
    >>> args = HybridTrainingArguments(output_dir="runs/samsum", task="samsum", use_cpu=True)
    >>> args.learning_rate, args.lr_scheduler_type.value
    (0.001, 'cosine')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

import torch
from transformers import Seq2SeqTrainingArguments

from peft_hybrid.tasks import Task, get_task

logger = logging.getLogger(__name__)


def _bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class HybridTrainingArguments(Seq2SeqTrainingArguments):
    """Training arguments with the paper's recipe as defaults.

    Defaults that differ from ``Seq2SeqTrainingArguments``: ``bf16`` (``None`` = on where CUDA
    supports bf16, else fp32 with a logged notice), ``per_device_train_batch_size=16``,
    ``per_device_eval_batch_size=16``, ``learning_rate=1e-3``, ``weight_decay=1e-3``,
    ``optim="adamw_torch"``, ``lr_scheduler_type="cosine"``, ``warmup_steps=500``,
    ``num_train_epochs=20``, ``eval_strategy="epoch"``, ``save_strategy="epoch"``,
    ``save_total_limit=2``, ``load_best_model_at_end=True``, ``predict_with_generate=True``,
    ``train_sampling_strategy="group_by_length"`` (transformers 5's name for
    ``group_by_length=True``: batches of similar length instead of padding everything to 512),
    ``average_tokens_across_devices=False`` and ``ddp_find_unused_parameters=False``.
    ``metric_for_best_model``/``greater_is_better`` left ``None`` come from ``task``.

    Added fields: ``task``, ``max_source_length``, ``max_target_length``, ``write_predictions``,
    ``early_stopping_patience``, ``early_stopping_threshold``.

    Example:
        >>> args = HybridTrainingArguments(output_dir="out", task="samsum", use_cpu=True)
        >>> args.metric_for_best_model, args.greater_is_better, args.lr_scheduler_type.value
        ('rougeL', True, 'cosine')
    """

    # Optimisation (the paper's AdamW / cosine / warm-up settings)
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (paper: 1e-3)."})
    weight_decay: float = field(default=1e-3, metadata={"help": "AdamW weight decay (paper: 1e-3)."})
    optim: str = field(
        default="adamw_torch", metadata={"help": "Optimizer (paper: AdamW, betas 0.9/0.999, eps 1e-8)."}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (paper: cosine)."})
    warmup_steps: float = field(default=500, metadata={"help": "Linear warm-up steps (paper: 500)."})
    num_train_epochs: float = field(
        default=20.0, metadata={"help": "Maximum epochs (paper: 20, with early stopping)."}
    )
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch per device (paper: 16)."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Evaluation batch per device (paper: 16)."})
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision; None = on where CUDA supports bf16 (the paper's setting), else fp32."
        },
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "Batch similar lengths together (dynamic padding) instead of padding to a fixed length."},
    )
    # Evaluation, checkpoints and model selection
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: 'no', 'steps' or 'epoch'."})
    save_strategy: str = field(
        default="epoch", metadata={"help": "When to checkpoint: 'no', 'steps', 'epoch', 'best'."}
    )
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Checkpoints kept (the best one is always kept besides the latest)."}
    )
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Restore the best adapter after training."})
    predict_with_generate: bool = field(
        default=True, metadata={"help": "Evaluate on generated text with the task metric."}
    )
    early_stopping_patience: int | None = field(
        default=3,
        metadata={
            "help": (
                "Stop after this many evaluations without improvement of metric_for_best_model; None or 0 disables."
            )
        },
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Smallest change of metric_for_best_model that counts as an improvement."}
    )
    # Distributed: T5's forward takes **kwargs, so averaging tokens across devices would scale the loss.
    average_tokens_across_devices: bool = field(
        default=False, metadata={"help": "Average the token count across devices for the loss (off: see docs)."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable parameter is used in each step, so no search is needed."}
    )
    # Task and data
    task: str | None = field(default=None, metadata={"help": "Registered task name (samsum, wikisql, sst2, ...)."})
    max_source_length: int = field(
        default=512, metadata={"help": "Maximum input tokens (longer inputs are truncated)."}
    )
    max_target_length: int = field(
        default=128, metadata={"help": "Maximum target tokens; also the generation cap when the task sets none."}
    )
    write_predictions: bool = field(
        default=True, metadata={"help": "Write predictions and metrics of each evaluation into output_dir."}
    )
    # Speed (peft_hybrid.training.speed)
    bf16_frozen_base: bool = field(
        default=False,
        metadata={
            "help": "Store the frozen base in bf16 (needs bf16=True); LoRA and the prompt stay fp32 master weights."
        },
    )
    compile_stacks: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the encoder and decoder stacks (dynamic shapes; the prompt join stays eager)."
        },
    )
    merged_eval: bool = field(
        default=True,
        metadata={
            "help": "Evaluate and predict with LoRA merged into fresh weight tensors (faster generation); "
            "the base weights are put back bit-identical afterwards."
        },
    )
    fast_generation: bool = field(
        default=False,
        metadata={
            "help": "Generate in evaluate/predict with a static KV cache and compiled decoder steps "
            "(peft_hybrid.inference.fast_generation): the same tokens in fp32, after one compile per shape bucket."
        },
    )
    hub_endpoint: str | None = field(
        default=None,
        metadata={
            "help": (
                "Hub URL to push to; None means HF_ENDPOINT or huggingface.co (read when huggingface_hub is imported)."
            )
        },
    )

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = _bf16_available() and not self.use_cpu
            if not self.bf16:
                logger.warning("bf16 is not available here (it needs a CUDA GPU with bf16 support): training in fp32.")
        # Remember what the user left unset: the task fills it (here or in HybridTrainer).
        self._metric_from_task = self.metric_for_best_model is None
        # The task's direction belongs to the task's metric; a user's metric gets the parent's rule.
        self._direction_from_task = self.greater_is_better is None and self._metric_from_task
        if self.task is not None:
            self.apply_task_defaults(get_task(self.task))
        if self.early_stopping_patience:
            if self.early_stopping_patience < 0:
                raise ValueError(
                    f"early_stopping_patience={self.early_stopping_patience}: pass a positive count, "
                    "or None/0 to disable."
                )
            if not self.load_best_model_at_end or self.eval_strategy == "no":
                raise ValueError(
                    "early_stopping_patience needs load_best_model_at_end=True and an eval_strategy other than 'no'; "
                    "set them, or pass early_stopping_patience=None to train without early stopping."
                )
        if self.max_source_length <= 0 or self.max_target_length <= 0:
            raise ValueError("max_source_length and max_target_length must be positive token counts.")
        # Caught here, naming the argument: torch would fail later (batch size) or, for a zero
        # learning rate, train for hours without changing a weight.
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: pass a positive value.")
        super().__post_init__()

    def apply_task_defaults(self, task: Task) -> None:
        """Take ``metric_for_best_model``/``greater_is_better`` from ``task`` where the user left them unset."""
        if getattr(self, "_metric_from_task", False) and task.metric_for_best_model:
            self.metric_for_best_model = task.metric_for_best_model
        if getattr(self, "_direction_from_task", False) and task.metric_for_best_model:
            self.greater_is_better = task.greater_is_better


def as_hybrid_arguments(args: Seq2SeqTrainingArguments) -> HybridTrainingArguments:
    """``args`` as `HybridTrainingArguments`, the one form `HybridTrainer` reads.

    `HybridTrainingArguments` come back as they are. Plain ``Seq2SeqTrainingArguments`` keep
    every value they hold (the paper's defaults do not replace them), and the fields
    `HybridTrainingArguments` adds take its defaults, with one exception:
    ``early_stopping_patience`` is ``None``, because the plain arguments never asked to stop early
    (and by default neither evaluate nor restore the best model, which early stopping needs).
    Their ``metric_for_best_model`` is theirs too: a task does not replace it.

    Example:
        >>> from transformers import Seq2SeqTrainingArguments
        >>> args = as_hybrid_arguments(Seq2SeqTrainingArguments("out", learning_rate=0.01, use_cpu=True))
        >>> args.learning_rate, args.max_source_length, args.early_stopping_patience
        (0.01, 512, None)
    """
    if isinstance(args, HybridTrainingArguments):
        return args
    if not isinstance(args, Seq2SeqTrainingArguments):
        raise TypeError(
            f"args must be HybridTrainingArguments (or Seq2SeqTrainingArguments), got {type(args).__name__}: "
            "evaluation generates, which needs the Seq2Seq fields (predict_with_generate, generation_max_length)."
        )
    known = {f.name for f in fields(HybridTrainingArguments)}
    given = {f.name: getattr(args, f.name) for f in fields(args) if f.init}
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(
            f"{type(args).__name__} has field(s) {unknown} that HybridTrainingArguments does not know, so "
            "HybridTrainer would ignore them; pass HybridTrainingArguments (or a subclass of it) instead."
        )
    converted = HybridTrainingArguments(**given, early_stopping_patience=None)
    converted._metric_from_task = converted._direction_from_task = False
    return converted
