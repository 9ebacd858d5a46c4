"""The running batch in fixed shapes for a compiled decoder step (``peft-hybrid serve --fast``).

`SlotBatch` has the interface the scheduler uses of `peft_hybrid.serve.rowbatch.RowBatch`
(``concat``, ``filter``, ``step``, ``close_adapters``) but its tensors never change shape as rows
come and go, so the decoder step is one compiled graph (`peft_hybrid.inference.fast.compiled_step`,
CUDA graphs on a GPU):

- ``slots`` rows, each live row in one slot; a free slot runs along as a ``__base__`` row whose
  output nobody reads;
- a decoder self-attention cache of ``columns`` columns (transformers' static cache): every live
  row writes its newest token at one shared column ``t``. A row that joins at column ``s`` is
  masked before ``s``; T5's decoder position bias depends only on the distance between the query
  and a key, so the row sees exactly the distances it sees alone, and the masked columns get
  attention weight exactly 0. When ``t`` reaches the end, the cache shifts left by the columns no
  live row uses (an eager in-place copy, rare: ``columns`` exceeds the longest row);
- a cross-attention cache and encoder output of a fixed source bucket
  (`peft_hybrid.inference.GenerationBuckets.source_length`, masked on the right as in any padded
  batch); a longer source grows it to the next bucket (one more compile, bounded by the buckets).

Joining rows run their encoder pass and first decoder step eagerly (`RowBatch.prefill`, once per
request); `SlotBatch.concat` copies them into free slots. Per-row LoRA is gathered for every
adapter the model holds (`peft_hybrid.modeling.mixed.mixed_plan`), so the graph's inputs keep
their shapes whatever the rows' mix; loading an adapter changes them (one more compile). A model
holding more LoRA adapters than the batch has slots gathers only the rows' own instead (gathering
hundreds at every join would cost more than it saves); the shapes then follow the mix, and dynamo
marks the changing size dynamic after its first recompile.
"""

from __future__ import annotations

import contextlib

import torch
from transformers.cache_utils import EncoderDecoderCache, StaticCache
from transformers.modeling_outputs import BaseModelOutput

from peft_hybrid.inference import GenerationBuckets, _internals
from peft_hybrid.inference.fast import compiled_step
from peft_hybrid.modeling.mixed import BASE_ADAPTER, mixed_plan
from peft_hybrid.serve.rowbatch import RowBatch

_RECOMPILE_LIMIT = 64


class SlotBatch:
    """Up to ``slots`` rows decoding on ``model`` (a `HybridModel`) in fixed-shape tensors.

    Args:
        model: the served `HybridModel` (eval mode).
        slots: rows the batch holds (the scheduler's ``--max-batch-size``, rounded up to a bucket).
        columns: decoder self-attention cache length; must exceed the most tokens a row decodes.
        backend, mode: the ``torch.compile`` backend and mode (``mode=None``: CUDA graphs on a GPU).
        buckets: the source-length buckets of the cross-attention cache.

    Example (``backend="eager"`` only traces; the server compiles with inductor):
        >>> import torch
        >>> from peft_hybrid import HybridConfig, HybridModel
        >>> from peft_hybrid.offline import t5_from_preset
        >>> from peft_hybrid.serve.rowbatch import RowBatch
        >>> base, tokenizer = t5_from_preset("tiny")
        >>> model = HybridModel(base, HybridConfig(mode="lora"), tokenizer=tokenizer).eval()
        >>> slots = SlotBatch(model, slots=4, columns=16, backend="eager")
        >>> ids = [tokenizer(t).input_ids for t in ("Amy: see you at 5?", "Tom: late again")]
        >>> joining, logits = RowBatch.prefill(model, ids, ["default", "__base__"], tokenizer.pad_token_id)
        >>> eager, _ = RowBatch.prefill(model, ids, ["default", "__base__"], tokenizer.pad_token_id)
        >>> slots.concat(joining)
        >>> first = logits.argmax(-1)
        >>> fast = slots.step(first).argmax(-1)
        >>> slots.close_adapters()  # one batch's per-row LoRA hooks on the model at a time
        >>> len(slots), torch.equal(fast, eager.step(first).argmax(-1))
        (2, True)
        >>> eager.close_adapters()
    """

    def __init__(
        self,
        model,
        *,
        slots: int,
        columns: int,
        backend: str = "inductor",
        mode: str | None = None,
        buckets: GenerationBuckets | None = None,
    ) -> None:
        if slots < 1 or columns < 2:
            raise ValueError(f"SlotBatch(slots={slots}, columns={columns}): pass slots >= 1 and columns >= 2.")
        self.model = model
        self.generator = model.base_model
        self.slots, self.columns = slots, columns
        self.buckets = buckets or GenerationBuckets()
        self._step = compiled_step(self.generator, backend=backend, mode=mode)
        config = self.generator.get_decoder().config  # its num_layers: the decoder's layers
        self._config = config
        self._dtype = next(self.generator.parameters()).dtype
        self._device = model.device
        self._heads, self._head_dim = config.num_heads, config.d_kv
        self.names: list[str] = []  # each live row's adapter, in the scheduler's row order
        self._slot_of: list[int] = []  # each live row's slot
        self._rows = torch.zeros(0, dtype=torch.long, device=self._device)  # the same, as an index
        self._slot_names = [BASE_ADAPTER] * slots
        self._lora: contextlib.ExitStack | None = None
        with torch.inference_mode():
            self._last = torch.zeros(slots, dtype=torch.long, device=self._device)
            self._start = torch.zeros(slots, dtype=torch.long, device=self._device)  # each slot's first column
            self._cols = torch.arange(columns, device=self._device)
            self._self_cache = StaticCache(config=config, max_cache_len=columns)
            self._self_cache.early_initialization(slots, self._heads, self._head_dim, self._dtype, self._device)
            self._source = 0
            self._grow_source(1)
            self._set_column(1)  # a joining row's start token goes just before ``t``: the first rows' in column 0

    @classmethod
    def sized(cls, model, max_batch_size: int, max_new_tokens: int, **compile_options) -> SlotBatch:
        """A batch for a server's limits: slots for ``max_batch_size`` rows (rounded up to a batch bucket),
        columns for ``max_new_tokens`` plus one cache bucket of room, so that the cache shifts at most
        once every that many steps. ``compile_options``: ``backend``, ``mode``, ``buckets``."""
        buckets = compile_options.get("buckets") or GenerationBuckets()
        columns = buckets.cache_length(max_new_tokens) + buckets.cache_multiple
        return cls(model, slots=buckets.batch(max_batch_size), columns=columns, **compile_options)

    def __len__(self) -> int:
        return len(self.names)

    # --- joining ----------------------------------------------------------------------------
    @torch.inference_mode()
    def concat(self, other: RowBatch) -> None:
        """Copy ``other``'s freshly prefilled rows (`RowBatch.prefill`) into free slots, after this batch's rows."""
        self.close_adapters()
        other.close_adapters()
        taken = set(self._slot_of)
        free = [s for s in range(self.slots) if s not in taken]
        if len(other) > len(free):
            raise ValueError(f"SlotBatch: {len(other)} rows join but only {len(free)} of {self.slots} slots are free.")
        if other.dec_mask.shape[1] != 1:
            raise ValueError("SlotBatch.concat takes rows straight from RowBatch.prefill (one decoded token).")
        if other.hidden.shape[1] > self._source:
            self._grow_source(other.hidden.shape[1])
        slots = torch.tensor(free[: len(other)], device=self._device)
        width = other.hidden.shape[1]
        column = self._t - 1  # the start token sits just before the column the next step writes
        self._hidden[slots] = 0
        self._hidden[slots, :width] = other.hidden.to(self._dtype)
        self._enc_mask[slots] = 0
        self._enc_mask[slots, :width] = other.enc_mask
        for mine, theirs in _layers(self._cross_cache, other.cache.cross_attention_cache):
            for name in ("keys", "values"):
                target = getattr(mine, name)
                target[slots] = 0
                target[slots, :, :width] = getattr(theirs, name)
        for mine, theirs in _layers(self._self_cache, other.cache.self_attention_cache):
            for name in ("keys", "values"):
                getattr(mine, name)[slots, :, column] = getattr(theirs, name)[:, :, 0]
        self._start[slots] = column
        for slot, name in zip(slots.tolist(), other.names):
            self._slot_names[slot] = name
        self._slot_of += slots.tolist()
        self._rows = torch.tensor(self._slot_of, dtype=torch.long, device=self._device)
        self.names = self.names + list(other.names)

    # --- leaving ----------------------------------------------------------------------------
    def filter(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep`` (in that order); the others' slots become free."""
        self.close_adapters()
        kept = [self._slot_of[i] for i in keep]
        for slot in set(self._slot_of) - set(kept):
            self._slot_names[slot] = BASE_ADAPTER  # an evicted adapter must not be gathered for a free slot
        self._slot_of = kept
        self._rows = torch.tensor(kept, dtype=torch.long, device=self._device)
        self.names = [self.names[i] for i in keep]
        if not kept:
            with torch.inference_mode():
                self._start.zero_()
                self._set_column(1)  # nobody left: the next rows start at the beginning again

    # --- stepping ---------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row's newest token; returns the next logits ``[rows, vocab]``."""
        if self._t == self.columns:
            self._shift()
        rows = self._rows
        self._last[rows] = tokens.to(self._device)
        if self._lora is None:
            with_lora = sum(config.uses_lora for config in self.model.adapters.values())
            plan = mixed_plan(self.model, list(self._slot_names), only_named=with_lora > self.slots)
            self._lora = contextlib.ExitStack()
            self._lora.enter_context(plan)
        allowed = (self._cols >= self._start[:, None]) & (self._cols <= self._t)
        mask = torch.zeros(allowed.shape, dtype=self._dtype, device=self._device)
        mask.masked_fill_(~allowed, torch.finfo(self._dtype).min)
        with _internals.recompile_limit(_RECOMPILE_LIMIT):
            out = self._step(
                self.generator,
                encoder_outputs=BaseModelOutput(last_hidden_state=self._hidden),
                attention_mask=self._enc_mask,
                decoder_input_ids=self._last[:, None],
                decoder_attention_mask=mask[:, None, None, :],  # 4D: transformers takes it as given
                cache=self._cache,
                use_cache=True,
            )
        self._t += 1
        return out.logits[rows, -1]

    def close_adapters(self) -> None:
        """Take the per-row LoRA hooks off the model (before rows change or adapters load)."""
        if self._lora is not None:
            self._lora.close()
            self._lora = None

    # --- the fixed-shape tensors ------------------------------------------------------------
    def _set_column(self, t: int) -> None:
        for layer in self._self_cache.layers:
            layer.cumulative_length.fill_(t)
        self._t = t

    def _shift(self) -> None:
        """Move every live row's columns left by the columns no live row uses; ``t`` moves with them."""
        by = int(self._start[self._rows].min()) if self._slot_of else self._t - 1
        if by < 1:
            raise RuntimeError(f"SlotBatch: a row holds all {self.columns} cache columns; build it with more columns.")
        for layer in self._self_cache.layers:
            for tensor in (layer.keys, layer.values):
                tensor[:, :, :-by] = tensor[:, :, by:].clone()  # in place: the cache keeps its address
        self._start.sub_(by).clamp_(min=0)
        self._set_column(self._t - by)

    def _grow_source(self, width: int) -> None:
        """Cross-attention cache and encoder output sized to the source bucket of ``width`` positions."""
        source = self.buckets.source_length(width)
        d_model = self._config.d_model
        hidden = torch.zeros(self.slots, source, d_model, dtype=self._dtype, device=self._device)
        enc_mask = torch.zeros(self.slots, source, dtype=torch.long, device=self._device)
        enc_mask[:, 0] = 1  # a free slot attends to one zero position: finite numbers nobody reads
        cross = StaticCache(config=self._config, max_cache_len=source)
        cross.early_initialization(self.slots, self._heads, self._head_dim, self._dtype, self._device)
        if self._source:
            old = self._source
            hidden[:, :old], enc_mask[:, :old] = self._hidden, self._enc_mask
            for mine, theirs in _layers(cross, self._cross_cache):
                mine.keys[:, :, :old], mine.values[:, :, :old] = theirs.keys, theirs.values
        for layer in cross.layers:
            layer.cumulative_length.fill_(source)  # filled: attention reads it instead of projecting
        self._hidden, self._enc_mask, self._cross_cache, self._source = hidden, enc_mask, cross, source
        self._cache = EncoderDecoderCache(self._self_cache, cross)


def _layers(mine, theirs):
    return zip(mine.layers, theirs.layers, strict=True)
