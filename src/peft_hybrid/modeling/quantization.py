"""Quantized frozen bases: hybrid adapters (QLoRA) on bitsandbytes 4-bit (NF4, FP4) and 8-bit bases.

The base is loaded the standard way, ``AutoModelForSeq2SeqLM.from_pretrained(path,
quantization_config=BitsAndBytesConfig(...))`` (or through `peft_hybrid.modeling.loading` with
``quantization_config=``); `HybridModel` then puts its adapters on it unchanged: PEFT picks its
bitsandbytes LoRA layers for the quantized Linears, the soft prompt and the LoRA matrices stay
fp32 master weights, and the trainable parameter counts are exactly those of the full-precision
base. `prepare_kbit_base` readies the base for training as PEFT's ``prepare_model_for_kbit_training``
does (every base weight frozen, the norms, embeddings and LM head kept in fp32; input gradients
for gradient checkpointing come with `HybridModel.gradient_checkpointing_enable`).

The quantization is provenance, not a requirement: an adapter records the one it was trained on
(``HybridConfig.base_quantization``, a `quantization_record`), and loads onto a base quantized
another way, or not at all, with one log line. Names follow TGI's ``--quantize`` values:
``bitsandbytes-nf4``, ``bitsandbytes-fp4`` and ``bitsandbytes`` (8-bit, LLM.int8).

Example:
    >>> from peft_hybrid.modeling.quantization import bnb_config
    >>> config = bnb_config("bitsandbytes-nf4", compute_dtype="float32")
    >>> config.load_in_4bit, config.bnb_4bit_quant_type
    (True, 'nf4')
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peft_hybrid.hub.card import describe

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

# TGI's --quantize values for the bitsandbytes methods ("bitsandbytes" alone is its 8-bit one).
QUANTIZE_CHOICES = ("bitsandbytes-nf4", "bitsandbytes-fp4", "bitsandbytes")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
INSTALL_HINT = "pip install 'peft-hybrid[quantize]'"
# bitsandbytes' parameter classes: packed 4-bit / int8 weights, never cast or counted as floats.
_QUANTIZED_PARAMS = ("Params4bit", "Int8Params")


class QuantizationError(ValueError):
    """A quantized base was asked for something it cannot do; the message says what to do instead."""


def require_bitsandbytes(what: str) -> None:
    """Refuse ``what`` (e.g. ``"--load_in_4bit"``) when bitsandbytes is not installed, naming the extra."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(
            f"{what} quantizes the base with bitsandbytes, which is not installed: {INSTALL_HINT} "
            "(bitsandbytes 0.50 or newer also runs on the CPU)."
        )


def bnb_config(quantize: str, *, compute_dtype: str | None = None, double_quant: bool = False) -> Any:
    """The ``BitsAndBytesConfig`` for a TGI ``--quantize`` value: the one place that builds one.

    Args:
        quantize: ``bitsandbytes-nf4``, ``bitsandbytes-fp4`` or ``bitsandbytes`` (8-bit).
        compute_dtype: the 4-bit layers' matmul dtype (``float32``, ``bfloat16``, ``float16``;
            default float32). Refused for 8-bit, whose matmul bitsandbytes fixes itself.
        double_quant: quantize the 4-bit quantization constants too (QLoRA's nested quantization).
    """
    if quantize not in QUANTIZE_CHOICES:
        choices = ", ".join(QUANTIZE_CHOICES)
        raise QuantizationError(f"quantize={quantize!r} is not supported; choose one of {choices}.")
    if compute_dtype is not None and compute_dtype not in COMPUTE_DTYPES:
        raise QuantizationError(
            f"compute dtype {compute_dtype!r} is not supported; choose one of {', '.join(COMPUTE_DTYPES)}."
        )
    require_bitsandbytes(f"quantize={quantize!r}")
    import torch
    from transformers import BitsAndBytesConfig

    if quantize == "bitsandbytes":
        if compute_dtype is not None or double_quant:
            raise QuantizationError(
                "8-bit quantization (bitsandbytes) takes no compute dtype and no nested quantization: those are "
                "4-bit settings. Drop them, or quantize to 4 bits (bitsandbytes-nf4 / bitsandbytes-fp4)."
            )
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize.rsplit("-", 1)[1],
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype or "float32"),
    )


@dataclass
class QuantizationArguments:
    """The base's quantization under TRL's argument names (``ModelConfig``), for the recipes.

    ``bnb_4bit_compute_dtype`` is transformers' name for what TRL passes as ``dtype``.

    Example:
        >>> QuantizationArguments(load_in_4bit=True).quantize
        'bitsandbytes-nf4'
    """

    load_in_4bit: bool = field(default=False, metadata={"help": "Quantize the frozen base to 4 bits (QLoRA)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Quantize the frozen base to 8 bits (LLM.int8)."})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 or fp4."})
    use_bnb_nested_quant: bool = field(
        default=False, metadata={"help": "Quantize the 4-bit quantization constants too (nested quantization)."}
    )
    bnb_4bit_compute_dtype: str | None = field(
        default=None, metadata={"help": f"Matmul dtype of the 4-bit layers: one of {COMPUTE_DTYPES} (float32)."}
    )

    def __post_init__(self) -> None:
        if self.load_in_4bit and self.load_in_8bit:
            raise QuantizationError("load_in_4bit and load_in_8bit exclude each other; pass one of them.")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise QuantizationError(f"bnb_4bit_quant_type={self.bnb_4bit_quant_type!r}: choose nf4 or fp4.")
        if not self.load_in_4bit and (self.use_bnb_nested_quant or self.bnb_4bit_compute_dtype is not None):
            raise QuantizationError(
                "use_bnb_nested_quant and bnb_4bit_compute_dtype are 4-bit settings; add --load_in_4bit true "
                "(8-bit takes neither)."
            )
        if self.quantize is not None:
            bnb_config(
                self.quantize, compute_dtype=self.bnb_4bit_compute_dtype, double_quant=self.use_bnb_nested_quant
            )

    @property
    def quantize(self) -> str | None:
        """The TGI name of the quantization asked for (``None``: a full-precision base)."""
        if self.load_in_4bit:
            return f"bitsandbytes-{self.bnb_4bit_quant_type}"
        return "bitsandbytes" if self.load_in_8bit else None

    def quantization_config(self) -> Any:
        """The ``BitsAndBytesConfig`` asked for, or ``None``."""
        if self.quantize is None:
            return None
        return bnb_config(
            self.quantize, compute_dtype=self.bnb_4bit_compute_dtype, double_quant=self.use_bnb_nested_quant
        )


def quantization_record(model: nn.Module) -> dict[str, Any] | None:
    """What quantized ``model``'s Linears, as an adapter config records it; ``None`` for a full-precision base.

    Read from the layers themselves (not ``config.quantization_config``), so a base quantized by
    hand is seen too: ``{"method": TGI name, "bits", "double_quant", "compute_dtype"}``.
    """
    if "bitsandbytes" not in sys.modules:  # a bitsandbytes layer cannot exist without its module
        return None
    try:
        import bitsandbytes as bnb
    except ImportError:  # the quantize extra is optional
        return None
    import torch
    from peft.tuners.lora import LoraLayer

    from peft_hybrid.modeling.lora import base_modules

    for _, module in base_modules(model):  # not every adapter's matrices: a LoRA layer's own base
        module = module.get_base_layer() if isinstance(module, LoraLayer) else module
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            return {
                "method": f"bitsandbytes-{module.weight.quant_type}",
                "bits": 4,
                "double_quant": bool(getattr(state, "nested", False)),
                "compute_dtype": str(module.compute_dtype or torch.float32).removeprefix("torch."),
            }
        if isinstance(module, bnb.nn.Linear8bitLt):
            return {"method": "bitsandbytes", "bits": 8, "double_quant": False, "compute_dtype": None}
    return None


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds bitsandbytes-quantized Linears."""
    return quantization_record(model) is not None


def method_of(record: dict[str, Any] | None) -> str | None:
    """The TGI name of a record (what a mismatch and a run manifest compare)."""
    return record.get("method") if record else None


def prepare_kbit_base(model: nn.Module) -> None:
    """Ready a quantized base for adapter training, as PEFT's ``prepare_model_for_kbit_training``.

    Every base weight is frozen and the weights left unquantized (layer norms, embeddings, the LM
    head, T5's fp32-kept ``wo``) are cast to fp32 where they were loaded in fp16/bf16: they carry
    the activations and gradients the adapters learn from. Gradient checkpointing is the
    trainer's switch (`HybridModel.gradient_checkpointing_enable` adds the input gradients it needs).
    """
    import torch

    _quiet_int8_cast_warning()
    with torch.no_grad():
        for param in model.parameters():
            param.requires_grad_(False)
            if type(param).__name__ in _QUANTIZED_PARAMS:
                continue
            if param.dtype in (torch.float16, torch.bfloat16):
                param.data = param.data.float()


class _Int8CastFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _quiet_int8_cast_warning() -> None:
    """bitsandbytes' int8 matmul logs that it casts its input to fp16 on every call: that cast is how
    LLM.int8 works, not a problem, and a served model would log it for every token."""
    target = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Int8CastFilter) for f in target.filters):
        target.addFilter(_Int8CastFilter())


def fp32_master_weights(tensors: Any) -> None:
    """PEFT makes a 4-bit layer's LoRA matrices in the layer's compute dtype; the optimizer needs fp32 ones
    (as ``get_peft_model``'s ``autocast_adapter_dtype`` keeps them). The layer casts its input to match."""
    import torch

    for tensor in tensors:
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor.data = tensor.data.float()


def check_mode(model: nn.Module, mode: str, source: str) -> None:
    """Refuse an adapter that trains the base itself (mode ``full``) on a quantized base."""
    if mode == "full" and is_quantized(model):
        raise QuantizationError(
            f"{source}: mode 'full' trains every base weight, but this base is quantized "
            f"({describe(quantization_record(model))}) and its 4/8-bit weights cannot be trained. Use mode "
            "'lora' or 'hybrid' on the quantized base (QLoRA), or load the base in full precision."
        )


def record_quantization(config: Any, model: nn.Module, *, fresh: bool, source: str) -> None:
    """Write the base's quantization into a new adapter's config; for a loaded one, log a mismatch once.

    ``fresh``: the adapter is new on this base (its config has no base shape yet), so the base's
    quantization is what it will be trained on. A loaded adapter keeps the record of the base it
    was trained on; another quantization (or none) is not refused, only logged in one line.
    """
    found = quantization_record(model)
    if fresh:
        config.base_quantization = found
    elif method_of(config.base_quantization) != method_of(found):
        logger.warning(
            "%s was trained on a base quantized as %s; this base is %s (outputs may differ slightly).",
            source,
            describe(config.base_quantization),
            describe(found),
        )


def check_frozen_dtype(model: nn.Module, what: str) -> None:
    """Refuse casting a quantized base to another float dtype (``bf16_frozen_base``, ``--dtype``)."""
    if is_quantized(model):
        raise QuantizationError(
            f"{what} casts the frozen base, but it is quantized ({describe(quantization_record(model))}): its "
            "Linears are already 4/8-bit and the rest stays fp32 for stable training. Drop it, or set the 4-bit "
            "compute dtype instead (bnb_4bit_compute_dtype / --dtype with --quantize)."
        )


def check_mergeable(model: nn.Module, what: str) -> None:
    """Refuse folding LoRA into a quantized base for good (``merge_and_unload``).

    ``W + s·B·A`` would have to be quantized again to 4/8 bits, and the rounding would swallow most
    of the low-rank update; the adapter runs unmerged on such a base instead.
    """
    record = getattr(model, "quantization", None)
    if record is not None:
        raise QuantizationError(
            f"{what}: this base is quantized ({describe(record)}), and merging would round the LoRA update "
            "back into 4/8-bit weights. Keep the adapter unmerged on it, or load the adapter onto the "
            "full-precision base to merge."
        )


def merge_skipped(model: nn.Module) -> bool:
    """Whether a temporary merge (`peft_hybrid.inference.merged_lora`) must run unmerged: logged once per model."""
    record = getattr(model, "quantization", None)
    if record is None:
        return False
    if not getattr(model, "_logged_unmerged", False):
        model._logged_unmerged = True
        logger.info("merged_lora: the base is quantized (%s), so LoRA runs unmerged beside it.", describe(record))
    return True
