"""The Trainer's Hub and model-card hooks for adapter-only runs (mixed into `HybridTrainer`).

transformers' ``Trainer`` pushes the whole ``output_dir`` through a shared ``HfApi`` and, at
each checkpoint, copies full-model weight files and a pickled ``training_args.bin`` into it.
These hooks keep its arguments and schedule (``push_to_hub``, ``hub_model_id``,
``hub_strategy`` end / every_save / checkpoint / all_checkpoints, ``hub_private_repo``,
``hub_token``, ``hub_revision``, ``hub_always_push``) and its background-push bookkeeping, but
upload through `peft_hybrid.hub.upload.push_folder`: only the adapter, the card, the images and the
metrics, with retries, clear errors and no token in any message. A card is written with every
save (checkpoints included), and the run is pushed when ``train`` ends.

Example (the last line pushes to the Hub, so it is not run here):
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.offline import t5_from_preset
    >>> base, tok = t5_from_preset("tiny")
    >>> model = HybridModel(base, HybridConfig(task="samsum"), tokenizer=tok)
    >>> import datasets
    >>> from peft_hybrid.tasks import get_task
    >>> from peft_hybrid.training.data import tokenize_dataset
    >>> from peft_hybrid.training.trainer import HybridTrainer, HybridTrainingArguments
    >>> rows = datasets.Dataset.from_list([{"source": "A: hi\\nB: hello", "target": "They greet."}] * 4)
    >>> formatted = get_task("samsum").format_dataset(rows, use_task_tags=False)
    >>> train = val = datasets.concatenate_datasets([formatted, tokenize_dataset(formatted, tok, 32, 8)[0]], axis=1)
    >>> args = HybridTrainingArguments(output_dir="runs/samsum", task="samsum", push_to_hub=True,
    ...                                hub_model_id="me/flan-t5-samsum-hybrid", hub_private_repo=True, use_cpu=True)
    >>> args.hub_model_id, args.hub_private_repo
    ('me/flan-t5-samsum-hybrid', True)
    >>> HybridTrainer(model, args, train_dataset=train, eval_dataset=val,
    ...               processing_class=tok).train()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from transformers.trainer_utils import HubStrategy, SaveStrategy
from transformers.utils.hub import PushInProgress

from peft_hybrid.hub.card import CardData, write_card
from peft_hybrid.hub.errors import HubError
from peft_hybrid.hub.upload import create_repo, push_folder

logger = logging.getLogger(__name__)


class HubPushMixin:
    """Adapter-aware replacements of ``Trainer``'s Hub and model-card methods.

    Put it before ``Seq2SeqTrainer`` in the bases, and have ``_save`` write
    `card_for_save` as the card (``model.save_pretrained(dir, card=...)``). Reads ``args.hub_endpoint`` when the
    arguments have it (a Hub other than ``HF_ENDPOINT``); ``ablation`` (rows ``{"mode",
    "metrics"}``) may be set to add an ablation table to the card.
    """

    ablation: list[dict[str, Any]] | None = None
    # Where the evaluation data came from when it is not the task's Hub dataset (see CardData.dataset).
    card_dataset: dict[str, Any] | None = None

    # --- cards --------------------------------------------------------------------------
    def card_data(self, final: bool = False) -> CardData:
        """The card of the model as trained so far (``final``: after ``train`` returned)."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        step = None
        if final and self.args.load_best_model_at_end and self.state.best_global_step:
            step = self.state.best_global_step  # the best checkpoint's adapter was restored
        return CardData.from_model(
            model,
            self.training_summary,
            evaluation_step=step,
            ablation=self.ablation,
            repo_id=self.hub_model_id,
            dataset=self.card_dataset,
        )

    def create_model_card(self, **kwargs: Any) -> None:
        """Write ``README.md`` (and ``training_curve.png``) into ``output_dir``.

        Keyword arguments override `CardData` fields (e.g. ``license``, ``model_name``).
        """
        if self.is_world_process_zero():
            data = self.card_data(final=getattr(self, "_train_finished", False))
            for key, value in kwargs.items():
                setattr(data, key, value)
            write_card(self.args.output_dir, data)

    def card_for_save(self, output_dir: str | Path) -> CardData:
        """The card to write with a save into ``output_dir`` (a checkpoint or the final folder)."""
        final = getattr(self, "_train_finished", False) and Path(output_dir) == Path(self.args.output_dir)
        return self.card_data(final=final)

    # --- training end -------------------------------------------------------------------
    def train(self, *args: Any, **kwargs: Any):
        self._train_finished = False
        result = super().train(*args, **kwargs)
        self._train_finished = True
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="End of training")
        return result

    # --- Hub ----------------------------------------------------------------------------
    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create the repo (``hub_model_id``, default the output folder's name) when missing."""
        self.push_in_progress = None
        if not self.is_world_process_zero():
            return
        name = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        self.hub_model_id = create_repo(
            name,
            token=token if token is not None else self.args.hub_token,
            private=private if private is not None else self.args.hub_private_repo,
            endpoint=self._hub_endpoint,
        )

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ):
        """Save the adapter and its card into ``output_dir`` and upload them to ``hub_model_id``.

        Returns huggingface_hub's ``CommitInfo`` (a ``Future`` of it when ``blocking=False``).
        Raises `peft_hybrid.hub.errors.HubError` subclasses; ``output_dir`` keeps everything.
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if kwargs:
            self.create_model_card(**kwargs)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        push_kwargs = dict(
            token=token,
            revision=revision or self.args.hub_revision,
            commit_message=commit_message,
            endpoint=self._hub_endpoint,
        )
        if blocking:
            return push_folder(self.args.output_dir, self.hub_model_id, **push_kwargs)
        return self._hub_api.run_as_future(push_folder, self.args.output_dir, self.hub_model_id, **push_kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.args.save_strategy == SaveStrategy.STEPS:
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch)}"
        jobs = [self._hub_api.run_as_future(self._push_in_background, checkpoint_folder, message)]
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            # The whole checkpoint (optimizer and RNG state too), so a run can resume from the Hub.
            where = (
                "last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT else Path(checkpoint_folder).name
            )
            jobs.append(
                self._hub_api.run_as_future(
                    self._push_in_background, checkpoint_folder, message + ", checkpoint", ("*",), where
                )
            )
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

    def _push_in_background(
        self, folder: str, message: str, patterns: tuple[str, ...] | None = None, where: str = ""
    ) -> None:
        # A failed checkpoint push must not stop training: the push at the end sends it all again.
        kwargs = {"allow_patterns": patterns} if patterns else {}
        try:
            push_folder(
                folder,
                self.hub_model_id,
                token=self.args.hub_token,
                revision=self.args.hub_revision,
                commit_message=message,
                endpoint=self._hub_endpoint,
                path_in_repo=where,
                **kwargs,
            )
        except HubError as err:  # messages carry no token
            logger.error("Checkpoint push skipped: %s", err)

    @property
    def _hub_endpoint(self) -> str | None:
        return getattr(self.args, "hub_endpoint", None)

    @property
    def _hub_api(self) -> HfApi:
        # One api object: its single worker thread runs background pushes in order.
        if getattr(self, "_hub_api_instance", None) is None:
            self._hub_api_instance = HfApi(endpoint=self._hub_endpoint)
        return self._hub_api_instance
