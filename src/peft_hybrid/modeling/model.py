"""`HybridModel`: a frozen T5-family base with PEFT LoRA layers and an encoder soft prompt."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peft_hybrid.config import HybridConfig
from peft_hybrid.hub.download import resolve_folder
from peft_hybrid.modeling.loading import load_base_model, record_base
from peft_hybrid.modeling.lora import LoraPart, read_peft_lora_config, save_peft_lora
from peft_hybrid.modeling.lora import expected_shapes as lora_shapes
from peft_hybrid.modeling.prompt import PROMPT_KEY, SoftPrompt, save_peft_prompt
from peft_hybrid.modeling.serialization import (
    WEIGHTS_NAME,
    AdapterLoadError,
    check_tensors,
    load_adapter,
    load_adapter_tensors_file,
    prepare_output_dir,
    save_adapter,
)

SUPPORTED_MODEL_TYPES = ("t5", "mt5", "umt5")
if TYPE_CHECKING:
    from peft_hybrid.hub.card import CardData


class HybridModel(nn.Module):
    """LoRA + encoder-side soft prompt on a frozen T5-family seq2seq model.

    The config's ``mode`` decides once, here, which parts exist: a :class:`SoftPrompt` (modes
    ``prompt``/``hybrid``), PEFT LoRA layers inside the base (``lora``/``hybrid``), or an
    entirely trainable base (``full``). Everything else works the same for every mode.

    Example:
        >>> from peft_hybrid import HybridConfig, HybridModel
        >>> from peft_hybrid.offline import t5_from_preset
        >>> base, tokenizer = t5_from_preset("tiny")
        >>> model = HybridModel(base, HybridConfig(), tokenizer=tokenizer)
        >>> batch = tokenizer(["Amy: see you at 5?"], return_tensors="pt")
        >>> out = model.generate(**batch, max_new_tokens=5)
    """

    main_input_name = "input_ids"

    def __init__(self, base_model: nn.Module, config: HybridConfig | None = None, tokenizer=None) -> None:
        super().__init__()
        config = HybridConfig() if config is None else config
        _check_supported(base_model)
        shape = base_shape(base_model)
        if config.base_model_shape is not None and config.base_model_shape != shape:
            raise ValueError(
                f"The config was made for a base of shape {config.base_model_shape}, but this base model has shape "
                f"{shape}. Load the adapter onto the base it was trained on ({config.base_model_name_or_path})."
            )
        config.base_model_shape = shape
        record_base(config, base_model)
        self.hybrid_config = config
        self.base_model = base_model
        self.merged = False
        base_model.requires_grad_(config.trains_base)
        self.lora = LoraPart(base_model, config) if config.uses_lora else None
        self.prompt = _build_prompt(base_model, config, tokenizer) if config.uses_prompt else None

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
    ) -> dict[str, torch.Tensor | None]:
        """The encoder inputs as the base model sees them (soft prompt prepended, mask extended)."""
        if self.prompt is None:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass input_ids or inputs_embeds.")
            inputs_embeds = self.base_model.get_input_embeddings()(input_ids)
        inputs_embeds, attention_mask = self.prompt.prepend(inputs_embeds, attention_mask)
        return {"input_ids": None, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        **kwargs: Any,
    ):
        """Same arguments and outputs as the base model's forward (loss when ``labels`` given)."""
        if encoder_outputs is None:
            encoder = self.encoder_inputs(input_ids, attention_mask, inputs_embeds)
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
        **kwargs: Any,
    ) -> torch.Tensor:
        """``base_model.generate`` on the prompt-extended encoder input; returns token ids."""
        encoder = self.encoder_inputs(input_ids, attention_mask, inputs_embeds)
        encoder = {k: v for k, v in encoder.items() if v is not None}
        return self.base_model.generate(**encoder, **kwargs)

    # --- parameters -----------------------------------------------------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The trainable adapter tensors under their saved names (LoRA as PEFT names them)."""
        tensors = {}
        if self.lora is not None:
            tensors.update(self.lora.tensors())
        if self.prompt is not None:
            tensors.update(self.prompt.tensors())
        return tensors

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Copy saved adapter tensors in, after checking every key, shape and dtype."""
        check_tensors(tensors, {k: tuple(v.shape) for k, v in self.adapter_tensors().items()}, source)
        with torch.no_grad():
            for key, param in self.adapter_tensors().items():
                param.copy_(tensors[key].to(param.dtype))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.num_parameters(True), self.num_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # --- merge ----------------------------------------------------------------------------
    def merge_and_unload(self) -> HybridModel:
        """Fold LoRA into the base weights (faster inference); the soft prompt stays.

        The merged model generates the same outputs; it can no longer be saved as an adapter.
        """
        if self.lora is not None:
            self.lora.merge_and_unload()
            self.lora = None
            self.merged = True
        return self

    # --- save / load ----------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, card: str | CardData | None = None) -> Path:
        """Save the adapter (never base weights, except mode ``full``) in safetensors.

        Writes ``hybrid_config.json``, ``adapter_model.safetensors`` and a ``README.md`` card
        (``card``: a `peft_hybrid.hub.card.CardData` or ready Markdown; default the model's own data).
        """
        if self.merged:
            raise ValueError("This model's LoRA was merged into the base; save the adapter before merge_and_unload().")
        directory = prepare_output_dir(save_directory)
        if self.hybrid_config.trains_base:
            self.base_model.save_pretrained(directory, safe_serialization=True)
        save_adapter(directory, self.hybrid_config, self.adapter_tensors())
        from peft_hybrid.hub.card import CardData, write_card

        write_card(directory, card if card is not None else CardData.from_model(self))
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        card: str | CardData | None = None,
        **kwargs: Any,
    ) -> Any:
        """Save the adapter and its card and upload them to the Hub repo ``repo_id``.

        The repo is created when missing (``private`` applies then); ``token`` defaults to
        HF_TOKEN or the stored login. Failures raise `peft_hybrid.hub.errors.HubError` subclasses; see
        `peft_hybrid.hub.upload.push_model` for the retry settings passed through ``kwargs``.

        Example:
            >>> from peft_hybrid import HybridConfig, HybridModel
            >>> from peft_hybrid.offline import t5_from_preset
            >>> base, tok = t5_from_preset("tiny")
            >>> model = HybridModel(base, HybridConfig(task="samsum"), tokenizer=tok)
            >>> model.push_to_hub("me/flan-t5-samsum-hybrid", private=True)  # doctest: +SKIP
        """
        from peft_hybrid.hub.upload import push_model

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
        """Write the parts as vanilla PEFT adapters: ``directory/lora`` and ``directory/prompt``.

        Each loads with ``peft.PeftModel.from_pretrained(base, path)`` and gives the same logits
        as this model in the matching mode (prompt: ``num_transformer_submodules=1``).
        """
        directory = prepare_output_dir(directory)
        written = {}
        if self.lora is not None:
            written["lora"] = save_peft_lora(directory / "lora", self.hybrid_config, self.lora.tensors())
        if self.prompt is not None:
            written["prompt"] = save_peft_prompt(
                directory / "prompt", self.prompt, self.base_model.config, self.hybrid_config.base_model_name_or_path
            )
        return written

    @classmethod
    def from_peft_lora(
        cls, base_model: nn.Module, lora_folder: str | Path, config: HybridConfig | None = None, tokenizer=None
    ) -> HybridModel:
        """Start from a vanilla PEFT LoRA adapter folder; ``config`` (default hybrid) adds the prompt.

        The LoRA settings (r, alpha, targets, dropout) come from the PEFT adapter.
        """
        lora_folder = Path(lora_folder)
        peft_config = read_peft_lora_config(lora_folder)
        tensors = load_adapter_tensors_file(lora_folder / "adapter_model.safetensors")
        config = HybridConfig(
            **{
                **(vars(config) if config is not None else {}),
                "r": peft_config.r,
                "lora_alpha": peft_config.lora_alpha,
                "target_modules": sorted(peft_config.target_modules),
                "lora_dropout": peft_config.lora_dropout,
                "base_model_name_or_path": peft_config.base_model_name_or_path,
            }
        )
        if not config.uses_lora:
            raise ValueError(f"from_peft_lora needs a mode with LoRA ('lora' or 'hybrid'), not {config.mode!r}.")
        expected = lora_shapes(base_model, config)
        check_tensors(tensors, expected, str(lora_folder))
        model = cls(base_model, config, tokenizer=tokenizer)
        model.lora.load_tensors(tensors)
        return model

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        base_model: nn.Module | None = None,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        tokenizer=None,
        allow_nonfinite: bool = False,
    ) -> HybridModel:
        """Load an adapter from a folder or a Hub repo id onto ``base_model``.

        With ``base_model=None`` the base named in the adapter config is loaded by
        `peft_hybrid.modeling.loading` (a folder, ``preset:NAME``, or a Hub id at the commit the
        adapter recorded; safetensors only, never remote code). A base passed in of another Hub commit
        loads with a ``BaseRevisionWarning``; one the adapter does not fit is left untouched. Tensors
        holding NaN or infinity are refused unless ``allow_nonfinite=True`` (for debugging).
        """
        folder = resolve_folder(
            path_or_repo_id, revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only
        )
        config, tensors = load_adapter(folder, allow_nonfinite=allow_nonfinite)
        if config.trains_base:
            if base_model is not None:
                raise ValueError(
                    f"{path_or_repo_id} holds a fully fine-tuned model, not an adapter; load it without base_model."
                )
            base_model = load_base_model(str(folder))
        elif base_model is None:
            base_model = load_base_model(config.base_model_name_or_path, revision=config.revision, token=token)
        _check_supported(base_model)
        _check_fits(base_model, config, tensors, folder / WEIGHTS_NAME)
        model = cls(base_model, config, tokenizer=tokenizer)
        model.load_adapter_tensors(tensors, source=str(folder / WEIGHTS_NAME))
        return model


def base_shape(model: nn.Module) -> dict[str, int]:
    c = model.config
    return {
        "d_model": c.d_model,
        "num_layers": c.num_layers,
        "num_decoder_layers": c.num_decoder_layers,
        "num_heads": c.num_heads,
        "vocab_size": c.vocab_size,
    }


def _check_supported(model: nn.Module) -> None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES or not hasattr(model, "generate"):
        raise TypeError(
            f"HybridModel wraps T5-family *ForConditionalGeneration models ({', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"got {type(model).__name__} (model_type={model_type!r})."
        )


def _check_fits(base_model: nn.Module, config: HybridConfig, tensors: dict, source: Path) -> None:
    """Check an adapter against a base before anything is injected into it."""
    shape = base_shape(base_model)
    if config.base_model_shape is not None and config.base_model_shape != shape:
        raise AdapterLoadError(
            f"{source.parent} holds an adapter for a base of shape {config.base_model_shape}, but the base model "
            f"given has shape {shape}. Load it onto {config.base_model_name_or_path or 'the base it was trained on'}."
        )
    expected = lora_shapes(base_model, config) if config.uses_lora else {}
    if config.uses_prompt:
        expected[PROMPT_KEY] = (config.num_virtual_tokens, base_model.config.d_model)
    check_tensors(tensors, expected, str(source))


def _build_prompt(base_model: nn.Module, config: HybridConfig, tokenizer) -> SoftPrompt:
    embeddings = base_model.get_input_embeddings()
    prompt = SoftPrompt(config.num_virtual_tokens, embeddings.weight.shape[1]).to(embeddings.weight.device)
    prompt.initialize(
        config.prompt_init, embeddings, seed=config.seed, tokenizer=tokenizer, text=config.prompt_init_text
    )
    return prompt
