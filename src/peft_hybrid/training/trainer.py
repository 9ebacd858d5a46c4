"""`HybridTrainer`: the paper's training recipe on the Hugging Face Trainer (arguments: `training.arguments`).

Checkpoints hold the adapter only (``adapter_model.safetensors`` + ``hybrid_config.json``, as
`HybridModel.save_pretrained` writes them; base weights only in mode ``full``) beside the
Trainer's own optimizer/scheduler/RNG/state files, and ``resume_from_checkpoint`` restores the
LoRA weights and the soft prompt and continues exactly where the run stopped. With a task,
evaluation generates (``predict_with_generate``), scores with the task's metric and writes the
predictions and metrics of every evaluation into ``output_dir``.

Example:
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.training.trainer import HybridTrainer, HybridTrainingArguments
    >>> from peft_hybrid.offline import t5_from_preset
    >>> base, tokenizer = t5_from_preset("tiny")
    >>> model = HybridModel(base, HybridConfig(mode="hybrid"), tokenizer=tokenizer)
    >>> args = HybridTrainingArguments(output_dir="runs/sst2", task="sst2", use_cpu=True)
    >>> args.metric_for_best_model, args.learning_rate
    ('accuracy', 0.001)

    Datasets hold the task's rows and their token columns side by side (the metric reads the rows):

    >>> import datasets
    >>> from peft_hybrid.tasks import get_task
    >>> from peft_hybrid.training.data import Seq2SeqCollator, tokenize_dataset
    >>> rows = datasets.Dataset.from_list([{"source": "a fine film", "target": "positive"},
    ...                                    {"source": "a dull film", "target": "negative"}] * 4)
    >>> formatted = get_task("sst2").format_dataset(rows, use_task_tags=False)
    >>> tokens, _ = tokenize_dataset(formatted, tokenizer, 32, 8)
    >>> train = validation = datasets.concatenate_datasets([formatted, tokens], axis=1)
    >>> args = HybridTrainingArguments(output_dir="runs/sst2", task="sst2", use_cpu=True, max_steps=2,
    ...                                report_to="none", disable_tqdm=True)
    >>> trainer = HybridTrainer(model, args, train_dataset=train, eval_dataset=validation,
    ...                         processing_class=tokenizer, data_collator=Seq2SeqCollator(tokenizer))
    >>> trainer.train().global_step  # the Trainer prints its logs
    {'eval_loss': ...}
    2
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import SequentialSampler
from transformers import EarlyStoppingCallback, Seq2SeqTrainer, Seq2SeqTrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from peft_hybrid.config import CONFIG_NAME, InferenceSettings
from peft_hybrid.hub.trainer_push import HubPushMixin
from peft_hybrid.inference import fast as fast_decoding
from peft_hybrid.inference.merged import merged_lora
from peft_hybrid.modeling.model import HybridModel
from peft_hybrid.modeling.quantization import check_frozen_dtype
from peft_hybrid.modeling.serialization import (
    AdapterLoadError,
    atomic_write_bytes,
    load_adapter,
    load_full_base_weights,
    staged_save,
)
from peft_hybrid.tasks import Task, get_task
from peft_hybrid.training.arguments import HybridTrainingArguments, as_hybrid_arguments
from peft_hybrid.training.callbacks import EvalOutputWriter, EvalRecord, TrainingSummaryCallback, decoded_rows
from peft_hybrid.training.checkpoints import resolve_resume_checkpoint
from peft_hybrid.training.data import EpochSeededLengthGroupedSampler
from peft_hybrid.training.run_folder import first_difference, require_writable_dir, run_identity
from peft_hybrid.training.speed import cast_frozen_base_, compile_model

logger = logging.getLogger(__name__)


class HybridTrainer(HubPushMixin, Seq2SeqTrainer):
    """``Seq2SeqTrainer`` for a `HybridModel`: adapter-only checkpoints, exact resume, task metrics.

    Args:
        model: the `HybridModel` to train (anything else raises TypeError).
        args: `HybridTrainingArguments`; plain ``Seq2SeqTrainingArguments`` keep their values and
            get the added fields' defaults (see `as_hybrid_arguments`).
        processing_class: the tokenizer (decodes generated predictions; saved with checkpoints).
        task: a `Task` or a registered task name; defaults to ``args.task``. Without a task the
            evaluation reports the loss only.
        eval_examples: the evaluation rows as the task reads them (``source``, ``target`` and any
            raw fields), in ``eval_dataset`` order; not needed when ``eval_dataset`` keeps those
            columns beside its token columns.
        Everything else as ``Seq2SeqTrainer``.

    A model of mode ``none`` has nothing to train: `train` raises ValueError, while `evaluate`
    and `predict` give the untouched base model's scores (the ablation's baseline row).

    Example: see the module docstring.
    """

    def __init__(
        self,
        model: HybridModel,
        args: Seq2SeqTrainingArguments | None = None,
        *,
        task: Task | str | None = None,
        eval_examples: Any = None,
        callbacks: list | None = None,
        compute_metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, HybridModel):
            raise TypeError(
                f"HybridTrainer trains a peft_hybrid.HybridModel, got {type(model).__name__}; wrap the base first: "
                "HybridModel(base_model, HybridConfig(mode=...), tokenizer=tokenizer)."
            )
        # Normalised once: everything below reads args.<field> directly.
        args = as_hybrid_arguments(args if args is not None else HybridTrainingArguments(output_dir="trainer_output"))
        task_name = args.task
        if isinstance(task, str):
            task = get_task(task)
        elif task is None and task_name is not None:
            task = get_task(task_name)
        if task is not None and task_name is not None and task.name != task_name:
            raise ValueError(f"task={task.name!r} but args.task={task_name!r}; pass one task, or the same in both.")
        if task is not None:
            args.apply_task_defaults(task)
        self.task = task
        self.eval_examples = eval_examples
        if task is not None and model.hybrid_config.task is None:
            model.hybrid_config.task = task.name
        # What evaluation does with an input and an output, saved with every adapter this trainer writes.
        saved = model.hybrid_config.inference or InferenceSettings()
        model.hybrid_config.inference = dataclasses.replace(
            saved, max_source_length=args.max_source_length, generation=evaluation_generation(task, args, {})
        )
        callbacks = list(callbacks or [])
        if args.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold))
        self._summary = TrainingSummaryCallback(task=task.name if task is not None else None)
        callbacks.append(self._summary)
        self._writer = EvalOutputWriter() if args.write_predictions else None
        if self._writer is not None:
            callbacks.append(self._writer)
        if compute_metrics is None and task is not None and args.predict_with_generate:
            compute_metrics = self._task_metrics
        self._metric_examples: Any = None
        self._metric_prefix = "eval"
        _check_prompt_fits(model, args)
        if args.should_save:
            require_writable_dir(args.output_dir, "output_dir")
        if args.bf16_frozen_base:
            if not args.bf16:
                raise ValueError("bf16_frozen_base=True needs bf16=True (bf16 autocast over the bf16 base).")
            check_frozen_dtype(model.base_model, "bf16_frozen_base=True")
            cast_frozen_base_(model, torch.bfloat16)
        if args.compile_stacks:
            compile_model(model, dynamic=True)
        super().__init__(model=model, args=args, callbacks=callbacks, compute_metrics=compute_metrics, **kwargs)

    def create_accelerator_and_postprocess(self) -> None:
        """Refuse sharded training (FSDP, DeepSpeed) as soon as the launcher's plugin is known.

        Adapter-only checkpoints and exact resume read and write the adapter tensors whole, on
        the main process; under FSDP or DeepSpeed those tensors (and the optimizer state) are
        sharded across ranks, and DeepSpeed's own checkpoints load through pickle. Failing here,
        before any step, is better than checkpoints that cannot be loaded.
        """
        super().create_accelerator_and_postprocess()
        sharded = "FSDP" if self.is_fsdp_enabled else "DeepSpeed" if self.is_deepspeed_enabled else None
        if sharded:
            raise ValueError(
                f"HybridTrainer does not support {sharded}: its adapter-only checkpoints need the adapter whole on "
                "the main process. The adapter needs no sharding (465k parameters at FLAN-T5-base): launch plain "
                "data parallel instead (accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml), "
                "and add bf16=True with bf16_frozen_base=True to halve the frozen base's memory."
            )

    # --- public additions -------------------------------------------------------------------
    @property
    def training_summary(self):
        """The `TrainingSummary` collected so far (also in ``output_dir/training_summary.json``)."""
        return self._summary.summary

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """``Trainer.train``; refuses a model with no trainable parameters (mode ``none``).

        ``resume_from_checkpoint=True`` (or ``"latest"``) resumes from the latest COMPLETE
        checkpoint, skipping any folder a killed run left half-written (see `peft_hybrid.training.checkpoints`).
        """
        if not self.model.hybrid_config.has_trainable_parameters:
            raise ValueError(
                f"The model (mode {self.model.hybrid_config.mode!r}) has no trainable parameters: there is nothing to "
                "train. Use trainer.evaluate()/predict() for the base model's scores, or pick mode 'prompt', 'lora', "
                "'hybrid' or 'full'."
            )
        resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", **gen_kwargs):
        """``Seq2SeqTrainer.evaluate`` with the task's generation settings as defaults."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str):  # Trainer passes the name when it loops over a dict of datasets
            dataset = self.eval_dataset[dataset]
        if not isinstance(dataset, dict):
            self._metric_examples = self._examples_for(dataset, given=eval_dataset is not None)
            self._metric_prefix = metric_key_prefix
        with self._inference_weights():
            return super().evaluate(
                eval_dataset, ignore_keys, metric_key_prefix, **self._generation_kwargs(gen_kwargs)
            )

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test", **gen_kwargs):
        """``Seq2SeqTrainer.predict`` with the task's generation settings as defaults.

        Metrics need ``test_dataset`` to keep the task's columns (``source``, ``target``, ...).
        """
        self._metric_examples = self._examples_for(test_dataset, given=True)
        self._metric_prefix = metric_key_prefix
        with self._inference_weights():
            return super().predict(test_dataset, ignore_keys, metric_key_prefix, **self._generation_kwargs(gen_kwargs))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        # Seq2SeqTrainer writes generate()'s defaults (max_length=20) into the model's generation
        # config after each batch; with the task's max_new_tokens, every later batch would then
        # warn that both are set. A caller's max_length still arrives through gen_kwargs.
        self.model.generation_config.max_length = None
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)

    @contextlib.contextmanager
    def _inference_weights(self):
        """LoRA merged into fresh tensors for evaluation (``merged_eval``) and the fast decoding path
        (``fast_generation``), both undone on exit."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        with contextlib.ExitStack() as stack:
            if self.args.merged_eval:
                stack.enter_context(merged_lora(model))
            if self.args.fast_generation:
                stack.enter_context(fast_decoding.fast_generation(model))
            yield

    # --- metrics ----------------------------------------------------------------------------
    def _generation_kwargs(self, given: dict[str, Any]) -> dict[str, Any]:
        return evaluation_generation(self.task, self.args, given)

    def _examples_for(self, dataset: Any, given: bool) -> Any:
        if dataset is None or self.task is None:
            return None
        if hasattr(dataset, "column_names") and "target" in dataset.column_names:
            return dataset
        if not given and self.eval_examples is not None:
            if len(self.eval_examples) != len(dataset):
                raise ValueError(
                    f"eval_examples has {len(self.eval_examples)} rows but eval_dataset has {len(dataset)}; pass the "
                    "task rows eval_dataset was tokenized from, in the same order."
                )
            return self.eval_examples
        raise ValueError(
            f"Task {self.task.name!r} scores generated text against the task rows, but this dataset has only "
            f"columns {getattr(dataset, 'column_names', '?')}. Keep 'source'/'target' (and the task's raw fields) "
            "beside the token columns, or pass eval_examples=<the task rows> to HybridTrainer."
        )

    def _task_metrics(self, prediction) -> dict[str, float]:
        examples = self._metric_examples
        if examples is None:
            raise ValueError("No task rows to score against; see HybridTrainer's eval_examples argument.")
        texts = self._decode(prediction.predictions)
        # Distributed evaluation pads the last batches with repeats of the first examples.
        texts = texts[: len(examples)]
        metrics = self.task.compute_metrics(texts, examples)
        if self._writer is not None:
            rows = list(examples)
            self._writer.pending = EvalRecord(
                self._metric_prefix, decoded_rows([r["source"] for r in rows], [r["target"] for r in rows], texts)
            )
        return metrics

    def _decode(self, token_ids: Any) -> list[str]:
        if isinstance(token_ids, tuple):
            token_ids = token_ids[0]
        tokenizer = self.processing_class
        if tokenizer is None:
            raise ValueError("HybridTrainer needs processing_class=<the tokenizer> to decode generated predictions.")
        token_ids = np.where(np.asarray(token_ids) < 0, tokenizer.pad_token_id, token_ids)
        texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return [t.strip() for t in texts]

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        # Trainer's 6 * tokens * parameters estimate, over the base's non-embedding weights (the
        # adapter adds well under 1%); HybridModel.num_parameters has no exclude_embeddings.
        ids = inputs.get("input_ids")
        return 0 if ids is None else 6 * ids.numel() * self.model.base_model.num_parameters(exclude_embeddings=True)

    # --- sampling ---------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        # transformers shuffles evaluation by length under group_by_length; predictions must stay in
        # dataset order to be paired with their references.
        sampler = super()._get_eval_sampler(eval_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
        return sampler

    # --- checkpoints: adapter weights only ----------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        card = self.card_for_save(output_dir)
        # All files at once: a full disk mid-save must not leave a new adapter beside half a tokenizer.
        with staged_save(output_dir) as staging:
            model.save_pretrained(staging, card=card)
            self.training_summary.save(staging)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(staging)
            # JSON instead of Trainer's pickled training_args.bin: readable, and nothing to unpickle.
            atomic_write_bytes(staging / "training_args.json", self.args.to_json_string().encode("utf-8"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._restore_adapter(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info(
            f"Loading the best adapter from {self.state.best_model_checkpoint} (score {self.state.best_metric})."
        )
        self._restore_adapter(self.state.best_model_checkpoint)

    def _restore_adapter(self, folder: str) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        folder_path = Path(folder)
        if not (folder_path / CONFIG_NAME).is_file():
            raise AdapterLoadError(
                f"{folder} holds no {CONFIG_NAME}: it is not a HybridTrainer checkpoint. Pass a checkpoint-<step> "
                "folder written by HybridTrainer (or resume_from_checkpoint=True for the latest one)."
            )
        config, tensors = load_adapter(folder_path)
        difference = first_difference(run_identity(model.hybrid_config), run_identity(config))
        if difference is not None:
            raise AdapterLoadError(
                f"{folder} was saved by another run ({difference}); resume with a model built from the same "
                "HybridConfig (task, base, adapter arguments)."
            )
        if model.hybrid_config.trains_base:
            load_full_base_weights(model.base_model, folder_path)
        model.load_adapter_tensors(tensors, source=str(folder_path))


def evaluation_generation(task: Task | None, args: HybridTrainingArguments, given: dict[str, Any]) -> dict[str, Any]:
    """The ``generate`` arguments of an evaluation: the task's, the caller's ``given``, then the
    arguments' ``generation_max_length``/``generation_num_beams`` where neither sets them (as
    ``Seq2SeqTrainer.evaluate`` would), so the settings saved with the adapter are the ones used."""
    defaults = dict(task.generation_kwargs) if task is not None else {}
    if not defaults and args.generation_max_length is None:
        defaults["max_new_tokens"] = args.max_target_length
    if "max_length" in given or "max_new_tokens" in given:  # one cap, the caller's
        defaults.pop("max_length", None)
        defaults.pop("max_new_tokens", None)
    kwargs = {**defaults, **given}
    no_cap = kwargs.get("max_length") is None and kwargs.get("max_new_tokens") is None
    if no_cap and args.generation_max_length is not None:
        kwargs["max_length"] = args.generation_max_length
    if kwargs.get("num_beams") is None and args.generation_num_beams is not None:
        kwargs["num_beams"] = args.generation_num_beams
    return kwargs


def _check_prompt_fits(model: HybridModel, args: HybridTrainingArguments) -> None:
    max_source = args.max_source_length
    tokens = model.hybrid_config.num_virtual_tokens
    if model.prompt is not None and tokens > max_source:
        raise ValueError(
            f"num_virtual_tokens={tokens} is larger than max_source_length={max_source}: the soft prompt would "
            "outweigh every input. Lower num_virtual_tokens (paper: 30) or raise max_source_length."
        )
