"""How attribution drives the model: the encoder input as embeddings, the teacher-forced decoder,
the baseline, and float32 eval mode (`peft_hybrid.interpret.attribution` explains why)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class _LogProbs:
    """``embeds [B, L, d] -> [B, T]``: teacher-forced log p(y_t | embeds, y_<t) for every t."""

    def __init__(
        self, base: nn.Module, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor, output_ids: torch.Tensor
    ) -> None:
        self.base = base
        self.attention_mask = attention_mask
        self.decoder_input_ids = decoder_input_ids
        self.output_ids = output_ids

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        batch = embeds.shape[0]
        logits = self.base(
            inputs_embeds=embeds,
            attention_mask=self.attention_mask.expand(batch, -1),
            decoder_input_ids=self.decoder_input_ids.expand(batch, -1),
            use_cache=False,
        ).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        return log_probs.gather(-1, self.output_ids.expand(batch, -1).unsqueeze(-1)).squeeze(-1)

    def endpoints(self, embeds: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(x)`` and ``f(baseline)`` in float64 (what completeness compares against), without gradients."""
        with torch.no_grad():
            both = self(torch.cat([embeds, reference]))
        return both[0].double(), both[1].double()


def _token_strings(tokenizer, ids: list[int]) -> list[str]:
    # The embedding table can be larger than the vocabulary (FLAN-T5: 32,128 rows, 32,100 pieces),
    # and a model may emit one of the extra rows; name it by its id.
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [token if token is not None else f"<id {i}>" for token, i in zip(tokens, ids)]


def _base_of(model: nn.Module) -> nn.Module:
    """The transformers model that takes ``inputs_embeds`` as the encoder input as is."""
    return model.base_model if hasattr(model, "hybrid_config") else model


def _encoder_embeddings(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """What the encoder sees (prompt prepended for a `HybridModel`), detached, and the prompt length."""
    with torch.no_grad():
        if hasattr(model, "encoder_inputs"):
            encoder = model.encoder_inputs(input_ids=input_ids, attention_mask=attention_mask)
            if encoder["inputs_embeds"] is None:
                encoder["inputs_embeds"] = model.get_input_embeddings()(input_ids)
        else:
            encoder = {"inputs_embeds": model.get_input_embeddings()(input_ids), "attention_mask": attention_mask}
    embeds = encoder["inputs_embeds"].detach().float()
    return embeds, encoder["attention_mask"], embeds.shape[1] - input_ids.shape[1]


def _baseline_embeddings(model: nn.Module, embeds: torch.Tensor, baseline: str) -> torch.Tensor:
    if baseline == "zeros":
        return torch.zeros_like(embeds)
    pad_id = model.config.pad_token_id
    if pad_id is None:
        raise ValueError(
            "baseline='pad' needs model.config.pad_token_id; this model has none, so use baseline='zeros'."
        )
    with torch.no_grad():
        pad = model.get_input_embeddings().weight[pad_id].float()
    return pad.expand_as(embeds).clone()


def _decoder_ids(
    model, tokenizer, input_ids, attention_mask, target, max_new_tokens, generation_kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(decoder_input_ids, output_ids)``, both ``[1, T]``: the decoder is fed ``[start] + y_<T``."""
    start = model.config.decoder_start_token_id
    if start is None:
        raise ValueError("The model's config has no decoder_start_token_id; T5-family models need one to decode.")
    if target is not None:
        output_ids = tokenizer(text_target=target, return_tensors="pt")["input_ids"].to(input_ids.device)
    else:
        kwargs = {"max_new_tokens": max_new_tokens, **(generation_kwargs or {}), "do_sample": False, "num_beams": 1}
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if generated[0, 0].item() != start:
            raise ValueError(
                "generate() did not start with the decoder start token; pass target=... to attribute a given output."
            )
        output_ids = generated[:, 1:]
        pad = model.config.pad_token_id
        if pad is not None and pad != start:  # drop the padding a finished sequence may carry
            output_ids = output_ids[:, output_ids[0] != pad]
    if output_ids.shape[1] == 0:
        raise ValueError("Nothing to attribute: the output is empty. Raise max_new_tokens or pass a non-empty target.")
    decoder_input_ids = torch.cat([output_ids.new_full((1, 1), start), output_ids[:, :-1]], dim=1)
    return decoder_input_ids, output_ids


class _eval_float32:
    """Run a model in eval mode and float32, then restore its mode and each tensor's dtype.

    Casting bf16/fp16 to float32 and back is exact, so the model is returned unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.dtypes = [(t, t.dtype) for t in self._float_tensors() if t.dtype != torch.float32]
        for tensor, _ in self.dtypes:
            tensor.data = tensor.data.float()
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for tensor, dtype in self.dtypes:
            tensor.data = tensor.data.to(dtype)
        for module, training in self.modes:
            module.training = training

    def _float_tensors(self) -> Iterator[torch.Tensor]:
        seen = set()
        for tensor in list(self.model.parameters()) + list(self.model.buffers()):
            if tensor.is_floating_point() and id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor
