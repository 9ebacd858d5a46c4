"""`HybridModel`: a frozen T5-family base with named adapters (PEFT LoRA layers + encoder soft prompts)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peft_hybrid.config import HybridConfig
from peft_hybrid.hub.download import resolve_folder
from peft_hybrid.modeling.adapters import (
    SUPPORTED_MODEL_TYPES,
    AdapterRegistry,
    base_shape,
    check_fits,
    check_supported,
)
from peft_hybrid.modeling.loading import base_for_adapter
from peft_hybrid.modeling.mixed import (
    batch_rows,
    check_keywords,
    forward_keywords,
    generate_keywords,
    row_plan,
)
from peft_hybrid.modeling.parts import AdapterPart
from peft_hybrid.modeling.peft_folders import peft_lora_as_hybrid
from peft_hybrid.modeling.prompt import SoftPrompt, join_prompts
from peft_hybrid.modeling.quantization import check_mergeable, prepare_kbit_base, quantization_record
from peft_hybrid.modeling.serialization import WEIGHTS_NAME, load_adapter, prepare_output_dir

DEFAULT_ADAPTER = "default"
__all__ = ["DEFAULT_ADAPTER", "SUPPORTED_MODEL_TYPES", "HybridModel", "base_shape"]
if TYPE_CHECKING:
    from peft_hybrid.hub.card import CardData


class HybridModel(AdapterRegistry, nn.Module):
    """LoRA + encoder-side soft prompt adapters on one frozen T5-family seq2seq model.

    Each adapter's config ``mode`` decides once, when the adapter is added, which parts it has:
    a :class:`SoftPrompt` (modes ``prompt``/``hybrid``), PEFT LoRA layers inside the base
    (``lora``/``hybrid``), or an entirely trainable base (``full``, alone on its model). The
    model starts with one adapter, ``adapter_name``; more are added with ``add_adapter`` or
    ``load_adapter`` and picked with ``set_adapter`` (see `peft_hybrid.modeling.adapters`), or
    per row with ``adapter_names=[...]`` in ``forward``/``generate``.

    Example:
        >>> from peft_hybrid import HybridConfig, HybridModel
        >>> from peft_hybrid.offline import t5_from_preset
        >>> base, tokenizer = t5_from_preset("tiny")
        >>> model = HybridModel(base, HybridConfig(), tokenizer=tokenizer).eval()
        >>> model.add_adapter("short", HybridConfig(mode="prompt", num_virtual_tokens=5))
        >>> batch = tokenizer(["Amy: see you at 5?", "Tom: late again"], return_tensors="pt", padding=True)
        >>> out = model.generate(**batch, adapter_names=["default", "short"], max_new_tokens=5)
    """

    main_input_name = "input_ids"

    def __init__(
        self,
        base_model: nn.Module,
        config: HybridConfig | None = None,
        tokenizer=None,
        *,
        adapter_name: str = DEFAULT_ADAPTER,
    ) -> None:
        super().__init__()
        check_supported(base_model)
        # A quantized base (QLoRA) is readied once; its LoRA then never merges into the 4/8-bit weights.
        self.quantization = quantization_record(base_model)
        if self.quantization is not None:
            prepare_kbit_base(base_model)
        self.base_model = base_model
        self.prompts = nn.ModuleDict()
        self.tokenizer = tokenizer
        self.merged = False
        self._adapters = {}
        self._active = None
        self.add_adapter(adapter_name, HybridConfig() if config is None else config)
        self.set_adapter(adapter_name)

    # --- the active adapter, as single-adapter code sees it ---------------------------------
    @property
    def hybrid_config(self) -> HybridConfig:
        """The active adapter's config."""
        return self._adapters[self._active].config

    @property
    def prompt(self) -> SoftPrompt | None:
        """The active adapter's soft prompt (``None`` when its mode has none)."""
        return self._adapters[self._active].prompt

    @property
    def lora(self) -> AdapterPart | None:
        """The active adapter's LoRA (or DoRA) part (``None`` when its mode has none, or after merge)."""
        return self._adapters[self._active].lora

    # --- what the Trainer and generation utilities look for -------------------------------
    @property
    def config(self):
        """The base model's transformers config (the adapter's own is ``hybrid_config``)."""
        return self.base_model.config

    @property
    def generation_config(self):
        return self.base_model.generation_config

    @property
    def device(self) -> torch.device:
        return next(self.base_model.parameters()).device

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def can_generate(self) -> bool:
        return True

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.base_model.gradient_checkpointing_enable(**kwargs)
        # With a frozen base the first checkpointed block sees no input that needs grad.
        self.base_model.enable_input_require_grads()

    # --- forward / generate ---------------------------------------------------------------
    def encoder_inputs(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        *,
        prompts: list[SoftPrompt | None] | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """The encoder inputs as the base model sees them (soft prompt prepended, mask extended).

        ``prompts``: one prompt (or ``None``) per row, for a mixed batch; default the active one.
        """
        embeddings = self.base_model.get_input_embeddings()
        return join_prompts(embeddings, self.prompt, prompts, input_ids, attention_mask, inputs_embeds)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        adapter_names: list[str] | None = None,
        **kwargs: Any,
    ):
        """Same arguments and outputs as the base model's forward (loss when ``labels`` given).

        ``adapter_names``: one adapter name per row (``"__base__"`` for none), for a mixed batch.
        """
        check_keywords(kwargs, forward_keywords(type(self.base_model)), "forward")
        rows = batch_rows(input_ids, inputs_embeds, encoder_outputs, labels, decoder_input_ids)
        with row_plan(self, adapter_names, rows) as prompts:
            if encoder_outputs is None:
                encoder = self.encoder_inputs(input_ids, attention_mask, inputs_embeds, prompts=prompts)
            else:  # the encoder already ran, on the prompt-extended input and mask
                encoder = {"input_ids": None, "attention_mask": attention_mask, "inputs_embeds": None}
            return self.base_model(
                **encoder,
                labels=labels,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                encoder_outputs=encoder_outputs,
                **kwargs,
            )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        adapter_names: list[str] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``base_model.generate`` on the prompt-extended encoder input; returns token ids.

        With ``adapter_names`` (one per row, ``"__base__"`` for none), each row uses its own
        adapter; when all rows name the same one of an fp32 model, its LoRA is merged for the call
        (`peft_hybrid.inference.merged_lora`), otherwise LoRA runs per row. A half-precision model
        is not merged: rounding ``W + ΔW`` to 16 bits loses most of ΔW, and a row would then differ
        from the same row in a mixed batch more than plain batching makes it differ.
        """
        from peft_hybrid.modeling.lora import merged_layers

        check_keywords(kwargs, generate_keywords(type(self.base_model)), "generate")
        rows = batch_rows(input_ids, inputs_embeds)
        uniform = adapter_names is not None and len(set(adapter_names)) == 1 and len(adapter_names) == rows
        with row_plan(self, adapter_names, rows) as prompts:
            encoder = self.encoder_inputs(input_ids, attention_mask, inputs_embeds, prompts=prompts)
            encoder = {k: v for k, v in encoder.items() if v is not None}
            if uniform and not self.merged and self.quantization is None and self.base_model.dtype == torch.float32:
                with merged_layers(self):  # the layers hold just this call's adapter active
                    return self.base_model.generate(**encoder, **kwargs)
            return self.base_model.generate(**encoder, **kwargs)

    # --- parameters -----------------------------------------------------------------------
    def all_adapter_tensors(self) -> list[torch.Tensor]:
        """The tensors of every loaded adapter (whether active or not)."""
        return [t for name in self._adapters for t in self._adapters[name].tensors().values()]

    def adapter_tensors(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """An adapter's tensors (default the active one) under their saved names (LoRA as PEFT names them)."""
        name = self._active if adapter_name is None else adapter_name
        self._check_known(name)
        return self._adapters[name].tensors()

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Copy saved tensors into the active adapter, after checking every key, shape and dtype."""
        self._load_tensors(self._active, tensors, source)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.num_parameters(True), self.num_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # --- merge ----------------------------------------------------------------------------
    def merge_and_unload(self) -> HybridModel:
        """Fold the active adapter's LoRA into the base weights (faster inference); the soft prompt stays.

        The merged model generates the same outputs; it can no longer be saved as an adapter, nor
        take new adapters. Every other adapter must be deleted first: all of them run on the base
        this would change.
        """
        check_mergeable(self, "merge_and_unload()")
        others = [n for n in self._adapters if n != self._active]
        if others:
            raise ValueError(
                f"merge_and_unload folds adapter {self._active!r} into the base weights that every adapter shares, "
                f"so {others} would run on a changed base; delete_adapter() them first, or use "
                "peft_hybrid.inference.merged_lora() to merge for a block only."
            )
        adapter = self._adapters[self._active]
        kept = [part for part in adapter.parts if not part.merge()]
        self.merged = self.merged or len(kept) < len(adapter.parts)
        adapter.parts = kept
        return self

    # --- save / load ----------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | Path,
        card: str | CardData | None = None,
        *,
        adapter_names: list[str] | str | None = None,
    ) -> Path:
        """Save the active adapter (never base weights, except mode ``full``) in safetensors.

        Writes ``hybrid_config.json``, ``adapter_model.safetensors`` and a ``README.md`` card
        (``card``: a `peft_hybrid.hub.card.CardData` or ready Markdown; default the model's own data).
        ``adapter_names=[...]`` (or ``"all"``) saves several, PEFT's layout: the first at the root,
        each other in a ``<name>/`` subfolder, every one loadable alone; the root card lists them.
        """
        from peft_hybrid.modeling.saving import save_adapters

        if self.merged:
            raise ValueError("This model's LoRA was merged into the base; save the adapter before merge_and_unload().")
        return save_adapters(self, prepare_output_dir(save_directory), card, adapter_names)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        card: str | CardData | None = None,
        adapter_names: list[str] | str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Save the adapter and its card and upload them to the Hub repo ``repo_id``.

        ``adapter_names=[...]`` (or ``"all"``) pushes several adapters in ``save_pretrained``'s
        layout. The repo is created when missing (``private`` applies then); ``token`` defaults
        to HF_TOKEN or the stored login. Failures raise `peft_hybrid.hub.errors.HubError`
        subclasses; see `peft_hybrid.hub.upload.push_model` for the retry settings in ``kwargs``.

        Example:
            >>> from peft_hybrid import HybridConfig, HybridModel
            >>> from peft_hybrid.offline import t5_from_preset
            >>> base, tok = t5_from_preset("tiny")
            >>> model = HybridModel(base, HybridConfig(task="samsum"), tokenizer=tok)
            >>> model.push_to_hub("me/flan-t5-samsum-hybrid", private=True)  # doctest: +SKIP
            >>> model.push_to_hub("me/flan-t5-tasks", adapter_names="all")  # doctest: +SKIP
        """
        from peft_hybrid.hub.upload import push_model

        if adapter_names is not None:
            kwargs["adapter_names"] = adapter_names
        return push_model(
            self,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
            card=card,
            **kwargs,
        )

    def export_peft(self, directory: str | Path) -> dict[str, Path]:
        """Write the active adapter's parts as vanilla PEFT adapters: ``directory/lora`` and ``directory/prompt``.

        Each loads with ``peft.PeftModel.from_pretrained(base, path)`` and gives the same logits
        as this model in the matching mode (prompt: ``num_transformer_submodules=1``).
        """
        directory = prepare_output_dir(directory)
        written = {}
        for part in self._adapters[self._active].parts:
            folder = "lora" if part.in_lora_layers else part.kind
            written[folder] = part.export_peft(directory / folder)
        return written

    @classmethod
    def from_peft_lora(
        cls,
        base_model: nn.Module,
        lora_folder: str | Path,
        config: HybridConfig | None = None,
        tokenizer=None,
        *,
        adapter_name: str = DEFAULT_ADAPTER,
    ) -> HybridModel:
        """Start from a vanilla PEFT LoRA adapter folder; ``config`` (default hybrid) adds the prompt.

        The LoRA settings (r, alpha, targets, dropout) come from the PEFT adapter. To add one to a
        model that has adapters already: ``model.load_adapter(lora_folder, name)``.
        """
        config, tensors, source = peft_lora_as_hybrid(Path(lora_folder), base_model, config or HybridConfig())
        model = cls(base_model, config, tokenizer=tokenizer, adapter_name=adapter_name)
        check_fits(base_model, dataclasses.replace(config, mode="lora"), tensors, source)
        model.lora.load_tensors(tensors)
        return model

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        base_model: nn.Module | None = None,
        *,
        adapter_name: str = DEFAULT_ADAPTER,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        subfolder: str | None = None,
        tokenizer=None,
        allow_nonfinite: bool = False,
        quantization_config: Any = None,
    ) -> HybridModel:
        """Load an adapter from a folder or a Hub repo id onto ``base_model``, as ``adapter_name``.

        With ``base_model=None`` the base named in the adapter config is loaded by
        `peft_hybrid.modeling.loading` (a folder, ``preset:NAME``, or a Hub id at the commit the
        adapter recorded; safetensors only, never remote code). A base passed in of another Hub commit
        loads with a ``BaseRevisionWarning``; one the adapter does not fit is left untouched. Tensors
        holding NaN or infinity are refused unless ``allow_nonfinite=True`` (for debugging). More adapters join
        with ``model.load_adapter(path_or_repo_id, name)``. ``quantization_config`` (a ``BitsAndBytesConfig``)
        quantizes the base it loads (`peft_hybrid.modeling.quantization`).
        """
        folder = resolve_folder(
            path_or_repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            subfolder=subfolder,
        )
        config, tensors = load_adapter(folder, allow_nonfinite=allow_nonfinite)
        base_model = base_for_adapter(folder, config, base_model, token=token, quantization_config=quantization_config)
        check_supported(base_model)
        source = str(folder / WEIGHTS_NAME)
        check_fits(base_model, config, tensors, source)  # on the bare base: a refused adapter leaves it as is
        model = cls(base_model, config, tokenizer=tokenizer, adapter_name=adapter_name)
        model.load_adapter_tensors(tensors, source=source)
        return model
