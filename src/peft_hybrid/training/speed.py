"""Training speed switches for a `HybridModel`: a bf16 frozen base and compiled stacks.

- `cast_frozen_base_`: store the frozen base in bf16 while LoRA and the soft prompt stay fp32
  master weights. Under bf16 autocast the base weights are cast to bf16 for every matmul anyway;
  storing them in bf16 removes that per-step cast (and half the weight memory).
- `compile_model`: ``torch.compile`` of the encoder and decoder stacks only. The soft prompt is
  joined to the input embeddings *before* the compiled encoder, so it cannot cause graph breaks,
  and the same compiled stacks serve training and generation (the decoder with its KV cache).
- `dynamo_counters`: compile/graph-break/recompile counts, to check that shapes stay stable.

Generation speed (`merged_lora`, `fast_generation`) lives in `peft_hybrid.inference`;
length-grouped batching with dynamic padding in `peft_hybrid.training.data`.

Example:
    >>> import torch
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.training.speed import cast_frozen_base_
    >>> from peft_hybrid.offline import t5_from_preset
    >>> base, tokenizer = t5_from_preset("tiny")
    >>> model = cast_frozen_base_(HybridModel(base, HybridConfig()), torch.bfloat16)
    >>> model.prompt.weight.dtype, model.base_model.shared.weight.dtype
    (torch.float32, torch.bfloat16)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["cast_frozen_base_", "compile_model", "dynamo_counters"]


def cast_frozen_base_(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Cast every frozen floating-point parameter and buffer of ``model`` to ``dtype``, in place.

    Trainable parameters (LoRA ``A``/``B`` and the soft prompt) are left, or put back, in fp32:
    they are the master weights the optimizer updates. Train with bf16 autocast on top (the
    Trainer's ``bf16=True``) so that the loss and the LoRA matmuls see consistent dtypes; the
    gradients reach the fp32 parameters through the casts.

    Args:
        model: a `HybridModel` (or any module) whose frozen part should shrink.
        dtype: storage dtype for the frozen weights, ``torch.bfloat16`` or ``torch.float16``.

    Returns:
        ``model`` itself, for chaining.

    Raises:
        ValueError: nothing is frozen (mode ``full``: every weight trains, use mixed precision
            instead) or ``dtype`` is not a floating-point type.

    Example:
        >>> import torch
        >>> from peft_hybrid import HybridConfig, HybridModel
        >>> from peft_hybrid.offline import t5_from_preset
        >>> model = cast_frozen_base_(HybridModel(t5_from_preset("tiny")[0], HybridConfig(mode="lora")))
        >>> {p.dtype for p in model.parameters() if p.requires_grad}
        {torch.float32}
    """
    if not dtype.is_floating_point:
        raise ValueError(f"cast_frozen_base_(dtype={dtype}): pass a floating-point dtype such as torch.bfloat16.")
    params = list(model.parameters())
    if all(p.requires_grad for p in params):
        raise ValueError(
            "cast_frozen_base_ found no frozen parameters (mode 'full' trains every weight); "
            "keep fp32 weights and train with bf16 mixed precision instead."
        )
    # Every adapter stays fp32, not just the active (trainable) one: they are all master weights.
    adapters = {id(t) for t in model.all_adapter_tensors()} if hasattr(model, "all_adapter_tensors") else set()
    with torch.no_grad():
        for p in params:
            if not p.is_floating_point():
                continue
            # Assigning .data keeps each Parameter object, so optimizers and hooks still see it.
            wanted = torch.float32 if p.requires_grad or id(p) in adapters else dtype
            if p.dtype != wanted:
                p.data = p.data.to(wanted)
        for module in model.modules():
            for name, buf in module.named_buffers(recurse=False):
                if buf.is_floating_point() and buf.dtype != dtype:
                    setattr(module, name, buf.to(dtype))
    return model


def compile_model(
    model: nn.Module,
    *,
    dynamic: bool | None = True,
    backend: str = "inductor",
    mode: str | None = None,
) -> nn.Module:
    """``torch.compile`` the encoder and decoder stacks of a `HybridModel`, in place.

    Only the two transformer stacks are compiled (``nn.Module.compile``, so parameter names and
    saved keys do not change). The soft prompt concat, the embedding lookup, the LM head and
    the loss run eagerly around them: they are cheap or already single large kernels, and
    keeping them out means the prompt never breaks a graph. Generation reuses the same
    compiled stacks: the encoder once per batch, the decoder once per new token.

    Args:
        model: a `HybridModel` (its ``base_model`` must have ``encoder`` and ``decoder``).
        dynamic: ``True`` (default) compiles shape-generic graphs once, which length-grouped
            batches (a new source length almost every step) and generation (a KV cache that
            grows every token) need; ``False``/``None`` specialise on the first shapes and
            recompile for new ones — use them only with fixed-size (bucketed) batches.
        backend / mode: passed to ``torch.compile`` (``mode="max-autotune"`` on a GPU for the
            last few percent, at a much longer compile).

    Returns:
        ``model`` itself.

    Example:
        >>> from peft_hybrid import HybridConfig, HybridModel
        >>> from peft_hybrid.offline import t5_from_preset
        >>> model = compile_model(HybridModel(t5_from_preset("tiny")[0], HybridConfig()), backend="eager")
    """
    base = getattr(model, "base_model", model)
    stacks = [getattr(base, name, None) for name in ("encoder", "decoder")]
    if any(stack is None for stack in stacks):
        raise TypeError(f"compile_model needs a seq2seq model with .encoder and .decoder; got {type(base).__name__}.")
    for stack in stacks:
        stack.compile(dynamic=dynamic, backend=backend, mode=mode)
    return model


def dynamo_counters() -> dict[str, int]:
    """Compile statistics of this process so far (``torch._dynamo.reset()`` does not clear them;
    ``torch._dynamo.utils.counters.clear()`` does).

    ``frames``: frames compiled (a recompile for new shapes or a changed guard, such as
    ``train()``/``eval()``, counts again); ``graphs``: graphs produced; ``graph_breaks``: places
    where dynamo had to split a graph. Take them before and after some steps: equal numbers mean
    those steps reused compiled code.
    """
    from peft_hybrid.inference._internals import compile_counters

    counters = compile_counters()
    return {
        "frames": int(counters["frames"].get("ok", 0)),
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }
