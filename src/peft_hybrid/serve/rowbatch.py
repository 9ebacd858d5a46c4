"""The running batch's tensors: rows join (`RowBatch.prefill` + `RowBatch.concat`) and leave (`RowBatch.filter`).

Each row carries its encoder output (computed once, with its own soft prompt and LoRA), its
cross-attention keys and values, its decoder self-attention cache and its last token. One
`RowBatch.step` runs the decoder one token for every row, each with its own LoRA
(`peft_hybrid.modeling.mixed.RowLora`).

Rows of different lengths share the tensors as T5 allows without changing a row's numbers:
encoder positions are padded on the right (masked, as in any padded batch), and the decoder's
self-attention cache on the **left**, so that every row's newest token sits at the same
position. T5's decoder attention bias depends only on the distance between a query and a key,
and the padding keys are masked out, so a row sees exactly the distances it sees alone.
Columns that no row uses any more are cut after rows leave.
"""

from __future__ import annotations

import contextlib

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from peft_hybrid.modeling.mixed import mixed_plan


class RowBatch:
    """Rows decoding together on ``model`` (a `HybridModel`), one adapter name per row."""

    def __init__(self, model, names: list[str], hidden, enc_mask, cache, dec_mask, last) -> None:
        self.model = model
        self.names = names
        self.hidden = hidden  # [rows, source, d_model]
        self.enc_mask = enc_mask  # [rows, source]
        self.cache = cache  # EncoderDecoderCache: self-attention (left-padded) and cross-attention
        self.dec_mask = dec_mask  # [rows, decoded]: 0 on the left padding
        self.last = last  # [rows]: each row's newest token, the next step's input
        self._lora: contextlib.ExitStack | None = None

    def __len__(self) -> int:
        return len(self.names)

    # --- joining ----------------------------------------------------------------------------
    @classmethod
    @torch.inference_mode()
    def prefill(cls, model, input_ids: list[list[int]], names: list[str], pad_id: int):
        """New rows: their encoder pass and first decoder step. Returns the batch and its logits ``[rows, vocab]``."""
        base = model.base_model
        width = max(len(ids) for ids in input_ids)
        ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(input_ids), width), dtype=torch.long)
        for row, row_ids in enumerate(input_ids):
            ids[row, : len(row_ids)] = torch.tensor(row_ids)
            mask[row, : len(row_ids)] = 1
        device = model.device
        with mixed_plan(model, names, only_named=True) as prompts:
            encoder = model.encoder_inputs(ids.to(device), mask.to(device), prompts=prompts)
            hidden = base.get_encoder()(**encoder).last_hidden_state
            enc_mask = encoder["attention_mask"]
            start = base.config.decoder_start_token_id
            first = torch.full((len(input_ids),), start, dtype=torch.long, device=device)
            batch = cls(model, list(names), hidden, enc_mask, _empty_cache(), first.new_zeros((len(ids), 0)), first)
            logits = batch._forward()
        return batch, logits

    def concat(self, other: RowBatch) -> None:
        """Add ``other``'s rows after this batch's (decoder cache left-padded, encoder right-padded)."""
        self.close_adapters()
        other.close_adapters()
        decoded = max(self.dec_mask.shape[1], other.dec_mask.shape[1])
        source = max(self.hidden.shape[1], other.hidden.shape[1])
        self.dec_mask = torch.cat(
            [_pad(self.dec_mask, decoded, -1, left=True), _pad(other.dec_mask, decoded, -1, left=True)]
        )
        self.enc_mask = torch.cat([_pad(self.enc_mask, source, -1), _pad(other.enc_mask, source, -1)])
        self.hidden = torch.cat([_pad(self.hidden, source, -2), _pad(other.hidden, source, -2)])
        for mine, theirs in _layer_pairs(self.cache.self_attention_cache, other.cache.self_attention_cache):
            for name in ("keys", "values"):
                joined = [_pad(getattr(x, name), decoded, -2, left=True) for x in (mine, theirs)]
                setattr(mine, name, torch.cat(joined))
        for mine, theirs in _layer_pairs(self.cache.cross_attention_cache, other.cache.cross_attention_cache):
            for name in ("keys", "values"):
                setattr(mine, name, torch.cat([_pad(getattr(x, name), source, -2) for x in (mine, theirs)]))
        self.last = torch.cat([self.last, other.last])
        self.names = self.names + other.names

    # --- leaving ----------------------------------------------------------------------------
    def filter(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep`` (in that order); cut columns no remaining row uses."""
        self.close_adapters()
        index = torch.tensor(keep, dtype=torch.long, device=self.last.device)
        self.names = [self.names[i] for i in keep]
        self.last = self.last[index]
        dec_mask, enc_mask = self.dec_mask[index], self.enc_mask[index]
        # left padding every row has (decoder) and right padding every row has (encoder) can go
        dec_cut = int((dec_mask.sum(0) > 0).nonzero()[0]) if dec_mask.numel() and dec_mask.any() else 0
        enc_keep = int((enc_mask.sum(0) > 0).nonzero()[-1]) + 1
        self.dec_mask = dec_mask[:, dec_cut:]
        self.enc_mask = enc_mask[:, :enc_keep]
        self.hidden = self.hidden[index, :enc_keep]
        for layer in self.cache.self_attention_cache.layers:
            layer.keys, layer.values = layer.keys[index, :, dec_cut:], layer.values[index, :, dec_cut:]
        for layer in self.cache.cross_attention_cache.layers:
            layer.keys, layer.values = layer.keys[index, :, :enc_keep], layer.values[index, :, :enc_keep]

    # --- stepping ---------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row's newest token; returns the next logits ``[rows, vocab]``."""
        self.last = tokens.to(self.last.device)
        if self._lora is None:
            self._lora = contextlib.ExitStack()
            # a step feeds every LoRA layer one token per row (cross-attention keys come from the cache)
            self._lora.enter_context(mixed_plan(self.model, self.names, only_named=True, tokens=1))
        return self._forward()

    def close_adapters(self) -> None:
        """Take the per-row LoRA hooks off the model (before rows change or adapters load)."""
        if self._lora is not None:
            self._lora.close()
            self._lora = None

    def _forward(self) -> torch.Tensor:
        ones = self.dec_mask.new_ones((len(self.names), 1))
        self.dec_mask = torch.cat([self.dec_mask, ones], 1)
        out = self.model.base_model(
            encoder_outputs=BaseModelOutput(last_hidden_state=self.hidden),
            attention_mask=self.enc_mask,
            decoder_input_ids=self.last[:, None],
            decoder_attention_mask=self.dec_mask,
            cache=self.cache,
            use_cache=True,
        )
        return out.logits[:, -1]


def _empty_cache() -> EncoderDecoderCache:
    return EncoderDecoderCache(DynamicCache(), DynamicCache())


def _layer_pairs(mine, theirs):
    return zip(mine.layers, theirs.layers, strict=True)


def _pad(tensor: torch.Tensor, size: int, dim: int, *, left: bool = False) -> torch.Tensor:
    """``tensor`` padded with zeros along ``dim`` to ``size`` (masks: 0 is "not attended")."""
    extra = size - tensor.shape[dim]
    if extra <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = extra
    zeros = tensor.new_zeros(shape)
    return torch.cat([zeros, tensor] if left else [tensor, zeros], dim)
