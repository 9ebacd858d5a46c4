"""Mixed-task batches: one adapter per row, in one forward or ``generate`` call.

Each row's encoder input is its own soft prompt (of its own length, or none) followed by its own
tokens, padded on the right (`peft_hybrid.modeling.prompt.prepend_per_row`): T5's relative
position bias then sees every real token at the same distances as when the row runs alone, and
the padding is masked out of attention. LoRA runs per row through one batched path, prepared
once per call and layer: for few adapters and a token or two per row (a decoder step),
``((x @ [A_1ᵀ … A_kᵀ]) * row_mask) @ [s·B_1ᵀ; …]`` (two plain matmuls; each row keeps only its
adapter's columns), else ``bmm(bmm(x, A_rowᵀ), (s·B_row)ᵀ)`` with each row's A and B gathered
(rows without LoRA in a layer get zeros). Generation repeats rows for beams and
``num_return_sequences`` (``repeat_interleave``); the layers see a batch that many times larger
and repeat the row plan the same way.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any, NamedTuple

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from peft_hybrid.modeling.lora import lora_layers, set_active

BASE_ADAPTER = "__base__"


def check_adapter_names(adapter_names: Sequence[str], rows: int, known: Sequence[str]) -> list[str]:
    """One known adapter name (or ``__base__``) per row, else a ValueError saying which and why."""
    if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
        raise ValueError(
            f"adapter_names must be a list with one adapter name per row, got {type(adapter_names).__name__}."
        )
    names = list(adapter_names)
    if len(names) != rows:
        raise ValueError(f"adapter_names has {len(names)} names but the batch has {rows} rows; pass one per row.")
    unknown = sorted({n for n in names if n != BASE_ADAPTER and n not in known})
    if unknown:
        raise ValueError(
            f"adapter_names: unknown adapter(s) {unknown}; loaded adapters are {sorted(known)} "
            f"(or {BASE_ADAPTER!r} for the bare base)."
        )
    return names


class RowLora:
    """Per-row LoRA for the duration of a ``with`` block: hooks on every LoRA layer of ``base_model``.

    ``layer_parts`` maps each adapter with a part in the LoRA layers to that part; the part says
    what it adds to a layer for its rows (`peft_hybrid.modeling.parts.RowLayer`). The gathered
    tensors keep their autograd history, so a train-mode mixed forward trains each row's adapter
    as that row alone would.
    """

    def __init__(
        self,
        base_model: nn.Module,
        names: list[str],
        layer_parts: dict[str, Any],
        *,
        only_named: bool = False,
        tokens: int | None = None,
    ) -> None:
        self.model = base_model
        self.names = names
        self.parts = layer_parts
        # Tokens a row feeds each layer, when the caller knows (a decoder step: 1): the plans then
        # hold only the path such calls take.
        self.tokens = tokens
        # Every adapter the layers hold, not only the ones this batch names: the per-row tensors
        # then have one shape per model and batch size, so a compiled graph serves every mix.
        # ``only_named`` gathers just the batch's adapters instead (a server holding hundreds of
        # adapters would gather them all for every call otherwise).
        self.used = sorted(layer_parts)
        if only_named:
            self.used = [n for n in self.used if n in set(names)]
        # slot 0 is "no LoRA here": __base__ rows and adapters without LoRA in a layer gather zeros
        self.slots = torch.tensor([1 + self.used.index(n) if n in self.used else 0 for n in names])
        self._gathered: dict[tuple[int, int], _Plan | None] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        layers = list(lora_layers(self.model).values())  # not a walk over every adapter's matrices
        saved = [list(layer.active_adapters) for layer in layers]
        handles = []
        try:
            for layer in layers:
                set_active(layer, [])  # the layer returns its base output; the hook adds each row's LoRA
                handles.append(layer.register_forward_hook(self._hook))
                # Gathered here, eagerly, so that a compiled encoder reads them as tensor inputs
                # instead of tracing (and guarding on) the Python that builds them.
                self._rows(layer, 1, layer.get_base_layer().weight.device)
            yield
        finally:
            for handle in handles:
                handle.remove()
            for layer, names in zip(layers, saved):
                set_active(layer, names)
            self._gathered.clear()

    def _hook(self, layer: LoraLayer, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        rows = len(self.names)
        if x.shape[0] % rows:
            raise RuntimeError(f"A LoRA layer saw a batch of {x.shape[0]} rows for {rows} adapter names.")
        plan = self._rows(layer, x.shape[0] // rows, x.device)
        if plan is None:
            return output
        flat = x.reshape(x.shape[0], -1, x.shape[-1]).to((plan.row_a if plan.a is None else plan.a).dtype)
        if plan.mask is not None and _side_by_side(flat.shape[1], plan.a.shape[1], flat.shape[2]):
            lora = torch.matmul(torch.matmul(flat, plan.a) * plan.mask, plan.b)
        elif plan.row_a is not None:  # per-row A and B: two batched matmuls
            lora = torch.bmm(torch.bmm(flat, plan.row_a), plan.row_b)
        else:
            raise RuntimeError(f"A LoRA layer saw {flat.shape[1]} tokens per row, prepared for {self.tokens}.")
        # The single-adapter layer's order: B(A x), then times the (fp32) scale, rounded once to the
        # LoRA dtype; so a half-precision row rounds as it does alone.
        if plan.magnitude is None:
            delta = (lora * plan.scale).to(lora.dtype)
        else:  # DoRA: (g - 1) · base + (g · B A x) · scale, PEFT's order
            bias = layer.get_base_layer().bias
            base = output.reshape(lora.shape).to(lora.dtype)
            base = base - bias.to(lora.dtype) if bias is not None else base
            delta = (plan.magnitude - 1) * base + ((plan.magnitude * lora) * plan.scale).to(lora.dtype)
        return output + delta.reshape(output.shape).to(output.dtype)

    def _rows(self, layer: LoraLayer, repeat: int, device: torch.device) -> _Plan | None:
        key = (id(layer), repeat)
        if key not in self._gathered:
            self._gathered[key] = self._gather(layer, repeat, device)
        return self._gathered[key]

    def _gather(self, layer: LoraLayer, repeat: int, device: torch.device) -> _Plan | None:
        # one form per slot: slot 0 and adapters without LoRA in this layer add nothing
        forms = [None, *(self.parts[n].row_layer(layer) for n in self.used)]
        present = [form for form in forms if form is not None]
        if not present:
            return None
        linear = layer.get_base_layer()
        dtype = present[0].a.dtype
        rows = self.slots.repeat_interleave(repeat).tolist()
        at = torch.tensor(rows, device=device)
        scale = torch.tensor([0.0 if f is None else f.scale for f in forms], dtype=torch.float32, device=device)
        row_scale = scale[at].view(-1, 1, 1)
        row_magnitude = None
        if any(form.magnitude is not None for form in present):
            ones = torch.ones(linear.out_features, dtype=dtype, device=device)
            magnitudes = [ones if f is None or f.magnitude is None else f.magnitude.to(dtype) for f in forms]
            row_magnitude = torch.stack([magnitudes[slot] for slot in rows]).unsqueeze(1)
        a_t = [None if f is None else _as(f.a.t(), dtype) for f in forms]
        b_t = [None if f is None else _as(f.b.t(), dtype) for f in forms]
        ranks = [f.a.shape[0] for f in present]
        side_by_side = sum(ranks) <= linear.in_features // 2
        row_a = row_b = None
        if not side_by_side or self.tokens is None or not _side_by_side(self.tokens, sum(ranks), linear.in_features):
            # Per-row A and B, stacked straight from each row's slot (zeros: no LoRA, and past a smaller rank).
            rank = max(ranks)
            a_zero = torch.zeros(linear.in_features, rank, dtype=dtype, device=device)
            b_zero = torch.zeros(rank, linear.out_features, dtype=dtype, device=device)
            slot_a = [a_zero if a is None else _pad_rank(a, rank, 1) for a in a_t]
            slot_b = [b_zero if b is None else _pad_rank(b, rank, 0) for b in b_t]
            row_a, row_b = torch.stack([slot_a[s] for s in rows]), torch.stack([slot_b[s] for s in rows])
        if not side_by_side:
            return _Plan(None, None, None, row_a, row_b, row_scale, row_magnitude)
        # Few adapters: every adapter's A side by side, each row's mask keeping its own columns.
        owners = [slot for slot, f in enumerate(forms) if f is not None]
        owner = torch.repeat_interleave(torch.tensor(owners, device=device), torch.tensor(ranks, device=device))
        row_mask = (at[:, None] == owner[None, :]).to(dtype).unsqueeze(1)
        a = torch.cat([a for a in a_t if a is not None], 1)
        b = torch.cat([b for b in b_t if b is not None], 0)
        return _Plan(a, b, row_mask, row_a, row_b, row_scale, row_magnitude)


def _side_by_side(tokens: int, total_rank: int, in_features: int) -> bool:
    """Side by side costs every adapter's columns for every token: for a token or two per row (a
    decoder step) that beats per-row matmuls of rank r, for a whole input it does not."""
    return tokens * total_rank <= in_features // 2


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _pad_rank(tensor: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    """``tensor`` with zeros after its own rank along ``dim``, up to ``rank``."""
    extra = rank - tensor.shape[dim]
    if not extra:
        return tensor
    return torch.nn.functional.pad(tensor, (0, extra) if dim == 1 else (0, 0, 0, extra))


class _Plan(NamedTuple):
    """One layer's per-row tensors for one call (see `RowLora._gather`)."""

    a: torch.Tensor | None  # (in, total): every adapter's Aᵀ side by side; None with too many adapters
    b: torch.Tensor | None  # (total, out)
    mask: torch.Tensor | None  # (rows, 1, total): 1 on each row's own adapter's columns
    row_a: torch.Tensor | None  # (rows, in, rank): each row's own Aᵀ (zeros past its rank, and for no LoRA)
    row_b: torch.Tensor | None  # (rows, rank, out); None when every call of the plan goes side by side
    scale: torch.Tensor  # (rows, 1, 1) fp32
    magnitude: torch.Tensor | None  # (rows, 1, out) DoRA's g, ones for other rows; None without DoRA


def batch_rows(*tensors: Any) -> int | None:
    for tensor in tensors:
        if tensor is None:
            continue
        if isinstance(tensor, torch.Tensor):
            return tensor.shape[0]
        return tensor[0].shape[0]  # encoder_outputs: its hidden states come first
    return None


def row_plan(model, adapter_names: list[str] | None, rows: int | None):
    """Context for one call: the active adapter (``None``), one adapter for all rows, or a per-row mix."""
    if adapter_names is None:
        return contextlib.nullcontext(None)
    if rows is None:
        raise ValueError("adapter_names needs input_ids, inputs_embeds or labels to count the batch's rows.")
    names = check_adapter_names(adapter_names, rows, list(model._adapters))
    if model.merged or getattr(model, "_merged_adapter", None) is not None:
        merged = getattr(model, "_merged_adapter", None) or model._active
        if set(names) != {merged}:
            raise ValueError(
                f"LoRA of adapter {merged!r} is merged into the base weights; adapter_names={sorted(set(names))} "
                "needs the unmerged model (call generate outside merged_lora(), before merge_and_unload())."
            )
    if len(set(names)) == 1:
        return single_plan(model, names[0], rows)
    dropping = [n for n in set(names) if n in model._adapters and model._adapters[n].uses_dropout]
    if model.base_model.training and dropping:  # the per-row LoRA path has no dropout
        raise ValueError(
            f"adapter_names mixes adapters per row for inference, but the model is in train mode and "
            f"{sorted(dropping)} use LoRA dropout; call model.eval() first. Training updates one adapter "
            "at a time: set_adapter(name)."
        )
    return mixed_plan(model, names)


def single_plan(model, name: str, rows: int):
    """Every row names one adapter: run it alone (its prompt, its LoRA layers) for the call."""

    @contextlib.contextmanager
    def plan():
        with model._using(name) as prompt:
            yield [prompt] * rows

    return plan()


def mixed_plan(model, names: list[str], *, only_named: bool = False, tokens: int | None = None):
    """Rows name different adapters: per-row prompts, per-row LoRA through the batched path.

    ``only_named``: gather only the adapters ``names`` holds; ``tokens``: how many tokens per row
    every LoRA layer will see in the block, when the caller knows (see `RowLora`).
    """

    @contextlib.contextmanager
    def plan():
        # ``only_named``: the batch's adapters only, so a call costs the same however many are loaded
        held = [n for n in dict.fromkeys(names) if n in model._adapters] if only_named else model._adapters
        layer_parts = {n: model._adapters[n].lora for n in held if model._adapters[n].lora is not None}
        lora = RowLora(model.base_model, names, layer_parts, only_named=only_named, tokens=tokens)
        with lora.active():
            yield [model._adapters[n].prompt if n in model._adapters else None for n in names]

    return plan()


# --- keywords: what transformers' forward and generate accept, asked of transformers itself ---
@cache
def forward_keywords(model_class: type) -> frozenset[str]:
    """Keywords the base model's forward takes: its named parameters plus transformers' typed kwargs."""
    from transformers.utils.generic import TransformersKwargs

    return frozenset(_named_parameters(model_class.forward) | set(TransformersKwargs.__annotations__))


@cache
def generate_keywords(model_class: type) -> frozenset[str]:
    """Keywords ``generate`` takes: its parameters, every GenerationConfig field, and model kwargs."""
    from transformers import GenerationConfig

    named = _named_parameters(model_class.generate)
    # generate pops these from **kwargs itself (stop strings and assisted decoding need tokenizers).
    popped = {"tokenizer", "assistant_tokenizer", "use_model_defaults"}
    config_fields = {k for k in GenerationConfig().to_dict() if not k.startswith("_")}
    return frozenset(named | popped | config_fields | forward_keywords(model_class))


def check_keywords(kwargs: dict, allowed: frozenset[str], where: str) -> None:
    """Refuse keywords that the base model would swallow without using."""
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"HybridModel.{where}() got unexpected keyword argument(s) {unknown}: the base model would ignore "
            f"them. Check the spelling (mixed-task batches take adapter_names=[...], one name per row)."
        )


def _named_parameters(function) -> set[str]:
    """The parameters ``function`` takes by name (not ``self``, ``*args`` or ``**kwargs``)."""
    return {
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"
    }
