"""Adapter parts: what one adapter adds to a frozen base, one kind per module behind one interface.

An adapter's `HybridConfig` names its parts once (`HybridConfig.part_kinds`: the mode decides
which exist, ``use_dora`` picks DoRA for the LoRA one); `build_parts` makes them when the adapter
is added. From then on the model, mixed batches, merging, saving, PEFT export and cards ask the
parts; nothing downstream reads the mode again.

Every part (`AdapterPart`) answers the same questions:

- what it adds to the model: its constructor ``Part(host, config, adapter_name)`` (``host`` is the
  `HybridModel`) and, before it exists, ``expected_shapes(base_model, config)``;
- its tensors: ``tensors()``, the live parameters under their saved (PEFT) key names;
- its per-row form in a mixed batch: ``row_prompt()`` (the `SoftPrompt` before that row's encoder
  input) or ``row_layer(layer)`` (the `RowLayer` a PEFT LoRA layer adds for that row);
- its merge: ``merge()`` folds it into the base where that is possible (returns whether it is gone);
- ``remove()``, ``export_peft(folder, config)`` (a vanilla PEFT folder), and its card line
  ``card_line(config)``.

The three kinds: ``prompt`` (`peft_hybrid.modeling.parts.prompt`), ``lora``
(`peft_hybrid.modeling.parts.lora`), ``dora`` (`peft_hybrid.modeling.parts.dora`).

How to add an adapter part:

1. ``src/peft_hybrid/modeling/parts/<kind>.py``: a subclass of `AdapterPart` (or of an existing
   part, as DoRA extends LoRA) with ``kind``, its tensors and shapes, row form, merge, card line.
2. ``src/peft_hybrid/modeling/parts/__init__.py``: add the class to `PART_KINDS`.
3. ``src/peft_hybrid/config.py``: the field(s) that choose it (with ``help`` metadata: the recipes'
   and ``peft-hybrid train``'s ``--flags`` are generated from them), their validation, and the
   kind in ``HybridConfig.part_kinds``.
4. ``src/peft_hybrid/modeling/lora.py``, only for a part living in PEFT's LoRA layers: pass the
   option to PEFT's ``LoraConfig`` (``peft_lora_config``) and, when it changes the weights a
   merge produces, `merged_weight`.
5. ``src/peft_hybrid/modeling/mixed.py``, only when the per-row form is new: neither vectors
   before the input (``row_prompt``) nor what a `RowLayer` can say.
6. ``src/peft_hybrid/modeling/peft_folders.py``, when vanilla PEFT folders can hold it: move its
   ``LoraConfig`` field from refused to honoured.
7. ``src/peft_hybrid/training/ablation.py``, only if the option fits some modes and not others:
   ``ablation_config`` drops it for the rest, as it does ``use_dora``.
8. Tests in ``tests/modeling/parts/test_<kind>.py`` (train: it changes, the base does not;
   save/load round trip; PEFT's logits both ways; mixed rows equal alone; merge equals unmerged),
   and the README's "Adapter parts and DoRA" section.

DoRA followed it: 7 source files (steps 1-7; step 5 once, to give `RowLayer` its ``magnitude``,
so the next part of that shape skips it), one test file and the README. Saving, loading, the
card, the CLI and the recipes needed no change.

A card's method line is `method_summary`, built from each part's ``card_line``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from torch import nn

from peft_hybrid.config import HybridConfig

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer

    from peft_hybrid.modeling.prompt import SoftPrompt

__all__ = ["PART_KINDS", "AdapterPart", "RowLayer", "build_parts", "expected_shapes", "method_summary"]


class RowLayer(NamedTuple):
    """What one part adds to one LoRA layer's output for its rows of a mixed batch.

    ``out = base + scale · (x Aᵀ) Bᵀ``; with ``magnitude`` (DoRA, one value per output channel ``g``),
    ``out = base + (g - 1) · (base - bias) + g · scale · (x Aᵀ) Bᵀ``, the order PEFT's own forward uses.
    """

    a: torch.Tensor  # (r, in_features)
    b: torch.Tensor  # (out_features, r)
    scale: float
    magnitude: torch.Tensor | None = None  # (out_features,): g = m / ‖W + ΔW‖, or None for plain LoRA


class AdapterPart(ABC):
    """One piece of one named adapter (see the module docstring for what each method answers)."""

    kind: ClassVar[str]
    # True for parts inside PEFT's LoRA layers (what `HybridModel.lora` returns, what merges into Linears).
    in_lora_layers: ClassVar[bool] = False

    def __init__(self, host: nn.Module, config: HybridConfig, adapter_name: str, *, tokenizer=None) -> None:
        self.host = host
        self.config = config
        self.name = adapter_name

    @classmethod
    @abstractmethod
    def expected_shapes(cls, base_model: nn.Module, config: HybridConfig) -> dict[str, tuple[int, ...]]:
        """Every tensor this part holds for ``base_model``, keyed as saved (checked before building it)."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The part's live parameters under their saved key names."""

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved values into the part (keys and shapes already checked)."""
        for key, param in self.tensors().items():
            param.copy_(tensors[key].to(param.dtype))

    def row_prompt(self) -> SoftPrompt | None:
        """Per-row form, encoder side: the vectors before each of its rows' tokens, or ``None``."""
        return None

    def row_layer(self, layer: LoraLayer) -> RowLayer | None:
        """Per-row form, inside ``layer``: what the part adds for its rows, or ``None`` (nothing there)."""
        return None

    @property
    def drops_in_training(self) -> bool:
        """Whether the part uses dropout in train mode (the per-row path has none)."""
        return False

    @abstractmethod
    def merge(self) -> bool:
        """Fold the part into the base weights where possible; ``True`` when the part is gone."""

    @abstractmethod
    def remove(self) -> None:
        """Free the part; the base is left exactly as it was."""

    @abstractmethod
    def export_peft(self, folder: Path) -> Path:
        """Write the part as a vanilla PEFT adapter folder (``PeftModel.from_pretrained`` loads it)."""

    @classmethod
    @abstractmethod
    def card_line(cls, config: HybridConfig) -> str:
        """The part in a few words, for the model card's method line."""


def _part_kinds() -> dict[str, type[AdapterPart]]:
    from peft_hybrid.modeling.parts.dora import DoraPart
    from peft_hybrid.modeling.parts.lora import LoraPart
    from peft_hybrid.modeling.parts.prompt import PromptPart

    return {part.kind: part for part in (PromptPart, LoraPart, DoraPart)}


PART_KINDS: dict[str, type[AdapterPart]] = _part_kinds()


def build_parts(host: nn.Module, config: HybridConfig, adapter_name: str, tokenizer=None) -> list[AdapterPart]:
    """The parts ``config`` names, built into ``host`` for ``adapter_name`` (``tokenizer``: for prompt init)."""
    return [PART_KINDS[kind](host, config, adapter_name, tokenizer=tokenizer) for kind in config.part_kinds]


def expected_shapes(base_model: nn.Module, config: HybridConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor an adapter with ``config`` holds for ``base_model``, keyed as saved."""
    shapes: dict[str, tuple[int, ...]] = {}
    for kind in config.part_kinds:
        shapes.update(PART_KINDS[kind].expected_shapes(base_model, config))
    return shapes


def method_summary(config: HybridConfig) -> str:
    """The card's method line, from the parts ``config`` names.

    Example:
        >>> method_summary(HybridConfig(mode="lora", use_dora=True))
        'DoRA (LoRA with a trained magnitude per output channel) on the attention projections, on a frozen base.'
    """
    if config.trains_base:
        return "full fine-tuning of every base weight."
    if not config.part_kinds:
        return "the untouched base model (no trainable parameters), the baseline row of the ablation."
    lines = [PART_KINDS[kind].card_line(config) for kind in config.part_kinds]
    return " plus ".join(lines) + ", on a frozen base."
