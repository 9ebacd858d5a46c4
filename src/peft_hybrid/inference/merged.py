"""`merged_lora`: evaluate with the active LoRA folded into plain Linears; the base is put back bit-identical."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from peft_hybrid.modeling import lora
from peft_hybrid.modeling.quantization import merge_skipped

__all__ = ["merged_lora"]


@contextlib.contextmanager
def merged_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every LoRA layer is replaced by its base Linear holding ``W + s·B·A`` (DoRA: rescaled).

    Only the adapter in use is merged: the active adapter of a `HybridModel` holding several
    (the others stay out of the weights, and a mixed-adapter call inside the block is refused).
    Unlike PEFT's ``merge()`` + ``unmerge()`` (which adds and later subtracts ``s·B·A`` in place,
    so the base weights drift by rounding each time), the merged weight is a *new* tensor, and
    on exit the original weight ``Parameter`` objects and LoRA layers are put back untouched:
    the base stays bit-identical, the adapter keeps training afterwards. Generation inside runs
    plain Linears, without LoRA's extra matmuls and dropout calls.

    The merge is `peft_hybrid.modeling.lora.merged_weight` (fp32, stored in the weight's own
    dtype). Leaving the block by an exception restores the model too. With `compile_model`, the
    first merged generation may compile once more (the modules inside the compiled stacks
    changed). A model without LoRA (modes ``prompt``/``none``/``full`` or after
    ``merge_and_unload``) is yielded unchanged, and so is one on a quantized base (one log line):
    merging would dequantize every wrapped weight to a full-precision copy for the block (the memory
    the quantization saves) or round ``W + s·B·A`` back to 4/8 bits (losing most of the update), so
    LoRA runs unmerged beside the quantized Linears, with the same outputs as outside the block.

    Example:
        >>> import torch
        >>> from peft_hybrid import HybridConfig, HybridModel
        >>> from peft_hybrid.offline import t5_from_preset
        >>> base, tokenizer = t5_from_preset("tiny")
        >>> model = HybridModel(base, HybridConfig()).eval()
        >>> batch = tokenizer(["Tom: late again"], return_tensors="pt")
        >>> with merged_lora(model):
        ...     fast = model.generate(**batch, max_new_tokens=4)
        >>> torch.equal(fast, model.generate(**batch, max_new_tokens=4))
        True
    """
    if merge_skipped(model):
        yield model
        return
    flag = hasattr(model, "active_adapter")
    if flag:
        model._merged_adapter = model.active_adapter
    try:
        with lora.merged_layers(model):
            yield model
    finally:
        if flag:
            model._merged_adapter = None
