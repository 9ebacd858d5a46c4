"""Thin glue over PEFT's LoRA layers: inject, name tensors as PEFT does, merge, interop."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from peft_hybrid.config import HybridConfig

ADAPTER_NAME = "default"
# PEFT saves LoRA tensors under the PeftModel's names, without the adapter name.
PEFT_PREFIX = "base_model.model."


def peft_lora_config(config: HybridConfig) -> LoraConfig:
    return LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        target_modules=list(config.target_modules),
        lora_dropout=config.lora_dropout,
        bias="none",
        task_type="SEQ_2_SEQ_LM",
        base_model_name_or_path=config.base_model_name_or_path,
        revision=config.revision,
    )


def target_linears(model: nn.Module, config: HybridConfig) -> dict[str, nn.Linear]:
    """The Linear modules LoRA will wrap; an error lists the names the model does have."""
    wanted = set(config.target_modules)
    found = {
        name: m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in wanted and isinstance(m, nn.Linear)
    }
    missing = wanted - {name.rsplit(".", 1)[-1] for name in found}
    if missing:
        linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"target_modules {sorted(missing)} not found in {type(model).__name__}; "
            f"its Linear modules are named {linear_names}. Set HybridConfig.target_modules to some of these."
        )
    return found


def expected_shapes(model: nn.Module, config: HybridConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the LoRA tensors an adapter for ``model`` must hold, keyed as PEFT saves them."""
    shapes = {}
    for name, linear in target_linears(model, config).items():
        shapes[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (config.r, linear.in_features)
        shapes[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (linear.out_features, config.r)
    return shapes


class LoraPart:
    """The LoRA half of an adapter, living inside the base model as PEFT LoRA layers."""

    def __init__(self, model: nn.Module, config: HybridConfig) -> None:
        target_linears(model, config)  # fail before touching the model
        inject_adapter_in_model(peft_lora_config(config), model, adapter_name=ADAPTER_NAME)
        self.model = model
        for layer in self.layers():
            for p in layer.lora_A.parameters():
                p.requires_grad_(True)
            for p in layer.lora_B.parameters():
                p.requires_grad_(True)

    def layers(self) -> list[LoraLayer]:
        return [m for m in self.model.modules() if isinstance(m, LoraLayer)]

    def tensors(self) -> dict[str, torch.Tensor]:
        marker = f".{ADAPTER_NAME}."
        return {
            PEFT_PREFIX + name.replace(marker, "."): p
            for name, p in self.model.named_parameters()
            if ".lora_A." in name or ".lora_B." in name
        }

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, param in self.tensors().items():
            param.copy_(tensors[key].to(param.dtype))

    @torch.no_grad()
    def merge_and_unload(self) -> None:
        """Fold ``B @ A * scale`` into each wrapped Linear and put the plain Linear back."""
        for name, module in list(self.model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent_name), child, module.get_base_layer())


def read_peft_lora_config(folder: str | Path) -> LoraConfig:
    """Read a vanilla PEFT LoRA adapter's config (for starting a hybrid from it)."""
    config = LoraConfig.from_pretrained(str(folder))
    if not isinstance(config, LoraConfig):
        raise ValueError(f"{folder} holds a {type(config).__name__}, not a LoRA adapter.")
    return config


def save_peft_lora(folder: Path, config: HybridConfig, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a vanilla PEFT LoRA adapter folder (loadable by ``peft.PeftModel.from_pretrained``)."""
    from peft_hybrid.modeling.serialization import write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    peft_lora_config(config).save_pretrained(str(folder))
    write_safetensors(folder / "adapter_model.safetensors", tensors)
    return folder
