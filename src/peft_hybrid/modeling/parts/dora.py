"""The ``dora`` part: LoRA with a trained magnitude per output channel, on PEFT's ``use_dora`` layers.

DoRA (weight-decomposed LoRA) writes each adapted weight as a magnitude times a direction:
``W' = m · (W + ΔW) / ‖W + ΔW‖``, the norm per output channel and treated as a constant in the
backward pass (as the paper and PEFT do). PEFT holds ``m`` in ``lora_magnitude_vector[name]`` and
saves it as ``<module>.lora_magnitude_vector``; it starts at ``‖W‖``, so a fresh adapter leaves the
base's output unchanged.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from peft_hybrid.config import HybridConfig
from peft_hybrid.modeling import lora
from peft_hybrid.modeling.parts import RowLayer
from peft_hybrid.modeling.parts.lora import LoraPart, _targets

MAGNITUDE_SUFFIX = "lora_magnitude_vector"


class DoraPart(LoraPart):
    """LoRA's matrices plus one magnitude vector per adapted Linear (``out_features`` values)."""

    kind = "dora"

    @classmethod
    def expected_shapes(cls, base_model: nn.Module, config: HybridConfig) -> dict[str, tuple[int, ...]]:
        shapes = lora.expected_shapes(base_model, config)
        for name, linear in lora.target_linears(base_model, config).items():
            shapes[f"{lora.PEFT_PREFIX}{name}.{MAGNITUDE_SUFFIX}"] = (linear.out_features,)
        return shapes

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().tensors()
        for name, layer in self.layers().items():
            tensors[f"{lora.PEFT_PREFIX}{name}.{MAGNITUDE_SUFFIX}"] = layer.lora_magnitude_vector[self.name].weight
        return tensors

    def row_layer(self, layer: LoraLayer) -> RowLayer | None:
        plain = super().row_layer(layer)
        if plain is None:
            return None
        return plain._replace(magnitude=magnitude_scale(layer, self.name))

    @classmethod
    def card_line(cls, config: HybridConfig) -> str:
        return f"DoRA (LoRA with a trained magnitude per output channel) on {_targets(config)}"


def magnitude_scale(layer: LoraLayer, adapter_name: str) -> torch.Tensor:
    """``m / ‖W + scale · B A‖`` per output channel, computed as PEFT's DoRA forward does (norm detached)."""
    a = layer.lora_A[adapter_name]
    b = layer.lora_B[adapter_name]
    dtype = a.weight.dtype
    eye = torch.eye(a.weight.shape[1], device=a.weight.device, dtype=dtype)
    delta = b(a(eye)).T  # B A, computed through the modules as PEFT does
    weight = layer.get_base_layer().weight.to(dtype)
    scaling = layer.scaling[adapter_name]
    norm = torch.linalg.norm(weight + scaling * delta.detach(), dim=1).to(dtype).detach()
    return layer.lora_magnitude_vector[adapter_name].weight / norm
