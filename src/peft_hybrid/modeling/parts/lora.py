"""The ``lora`` part: one adapter's A/B matrices inside the base's PEFT LoRA layers."""

from __future__ import annotations

from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from peft_hybrid.config import HybridConfig
from peft_hybrid.modeling import lora
from peft_hybrid.modeling.parts import AdapterPart, RowLayer


class LoraPart(AdapterPart):
    """LoRA under the adapter's name in PEFT's layers: ``W x + scale · B A x`` on each target Linear.

    Several adapters share one layer (``lora_A[name]``, ``lora_B[name]``), so a second adapter
    allocates its own matrices and nothing else; saved keys are PEFT's, without the adapter name.
    """

    kind = "lora"
    in_lora_layers = True

    def __init__(self, host: nn.Module, config: HybridConfig, adapter_name: str, *, tokenizer=None) -> None:
        super().__init__(host, config, adapter_name)
        self.model = host.base_model
        lora.inject(self.model, config, adapter_name)

    @classmethod
    def expected_shapes(cls, base_model: nn.Module, config: HybridConfig) -> dict[str, tuple[int, ...]]:
        return lora.expected_shapes(base_model, config)

    def layers(self) -> dict[str, LoraLayer]:
        """The LoRA layers holding this adapter, by module name."""
        return {name: layer for name, layer in lora.lora_layers(self.model).items() if self.name in layer.lora_A}

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, layer in self.layers().items():
            tensors[f"{lora.PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A[self.name].weight
            tensors[f"{lora.PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B[self.name].weight
        return tensors

    def row_layer(self, layer: LoraLayer) -> RowLayer | None:
        if self.name not in layer.lora_A:
            return None
        return RowLayer(layer.lora_A[self.name].weight, layer.lora_B[self.name].weight, layer.scaling[self.name])

    @property
    def drops_in_training(self) -> bool:
        return self.config.lora_dropout > 0

    def merge(self) -> bool:
        lora.merge_and_unload(self.model, self.name)
        return True

    def remove(self) -> None:
        lora.remove(self.model, self.name)

    def export_peft(self, folder: Path) -> Path:
        return lora.save_peft_lora(folder, self.config, self.tensors())

    @classmethod
    def card_line(cls, config: HybridConfig) -> str:
        return f"LoRA on {_targets(config)}"


def _targets(config: HybridConfig) -> str:
    if set(config.target_modules) <= {"q", "k", "v", "o"}:
        return "the attention projections"
    return "the " + ", ".join(f"`{t}`" for t in config.target_modules) + " layers"
