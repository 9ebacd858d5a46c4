"""Thin glue over PEFT's LoRA layers: inject per adapter name, PEFT key names, the one merge, interop.

Several named adapters share one base: each is a key of the same PEFT ``LoraLayer`` (``lora_A[name]``,
``lora_B[name]``), so a second adapter allocates its own A/B matrices and nothing else. Saved keys are
PEFT's, without the adapter name, so a folder does not depend on the name it was loaded under.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from peft_hybrid.config import HybridConfig

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


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every PEFT LoRA layer inside ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def set_active(layer: LoraLayer, adapter_names: list[str]) -> None:
    """Which adapters a layer applies, without PEFT's ``set_adapter`` side effect on ``requires_grad``."""
    layer._active_adapter = list(adapter_names)


def target_linears(model: nn.Module, config: HybridConfig) -> dict[str, nn.Linear]:
    """The Linear modules LoRA will wrap (seen through layers other adapters already wrapped).

    An error lists the names the model does have.
    """
    wanted = set(config.target_modules)
    linears = _base_linears(model)
    found = {name: m for name, m in linears.items() if name.rsplit(".", 1)[-1] in wanted}
    missing = wanted - {name.rsplit(".", 1)[-1] for name in found}
    if missing:
        linear_names = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(
            f"target_modules {sorted(missing)} not found in {type(model).__name__}; "
            f"its Linear modules are named {linear_names}. Set HybridConfig.target_modules to some of these."
        )
    return found


def _base_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's own Linears: a LoRA-wrapped one counts under its own name, its A/B matrices do not."""
    wrapped = lora_layers(model)
    found = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in wrapped):
            continue
        if name in wrapped:
            module = wrapped[name].get_base_layer()
        if isinstance(module, nn.Linear):
            found[name] = module
    return found


def expected_shapes(model: nn.Module, config: HybridConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the LoRA tensors an adapter for ``model`` must hold, keyed as PEFT saves them."""
    shapes = {}
    for name, linear in target_linears(model, config).items():
        shapes[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (config.r, linear.in_features)
        shapes[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (linear.out_features, config.r)
    return shapes


class LoraPart:
    """One named adapter's LoRA matrices, living inside the base model's PEFT LoRA layers."""

    def __init__(self, model: nn.Module, config: HybridConfig, adapter_name: str) -> None:
        target_linears(model, config)  # fail before touching the model
        active = {name: list(layer.active_adapters) for name, layer in lora_layers(model).items()}
        with warnings.catch_warnings():
            # Several adapters on one model is the point here, not the accident PEFT warns about.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(peft_lora_config(config), model, adapter_name=adapter_name)
        for name, layer in lora_layers(model).items():  # injecting activates the new adapter everywhere
            set_active(layer, active.get(name, []))
            if adapter_name in layer.lora_dropout:  # a new dropout starts in train mode: follow its layer's
                layer.lora_dropout[adapter_name].train(layer.training)
        self.model = model
        self.name = adapter_name
        self.scale = config.lora_alpha / config.r

    def layers(self) -> dict[str, LoraLayer]:
        """The LoRA layers holding this adapter, by module name."""
        return {name: layer for name, layer in lora_layers(self.model).items() if self.name in layer.lora_A}

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, layer in self.layers().items():
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A[self.name].weight
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B[self.name].weight
        return tensors

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, param in self.tensors().items():
            param.copy_(tensors[key].to(param.dtype))

    def remove(self) -> None:
        """Drop this adapter's matrices; a layer left with no adapter becomes its plain Linear again."""
        for name, layer in self.layers().items():
            for attribute in layer.adapter_layer_names + layer.other_param_names:
                held = getattr(layer, attribute)
                if self.name in held:
                    del held[self.name]
            if not layer.lora_A:
                _replace(self.model, name, layer.get_base_layer())
        peft_configs = getattr(self.model, "peft_config", None)
        if isinstance(peft_configs, dict):
            peft_configs.pop(self.name, None)
            if not peft_configs:
                del self.model.peft_config

    @torch.no_grad()
    def merge_and_unload(self) -> None:
        """Fold this adapter into each wrapped Linear and put the plain Linears back."""
        for name, layer in lora_layers(self.model).items():
            linear = layer.get_base_layer()
            if self.name in layer.lora_A:
                linear.weight.data = merged_weight(layer, self.name, linear.weight)
            _replace(self.model, name, linear)


def merged_weight(layer: LoraLayer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
    """``W + scale · B @ A`` for one adapter of one layer: computed in fp32, stored in W's dtype.

    The one merge of the package: `LoraPart.merge_and_unload` and `peft_hybrid.inference.merged_lora`
    both use it, so merged and unmerged generation cannot drift apart.
    """
    a = layer.lora_A[adapter_name].weight.float()
    b = layer.lora_B[adapter_name].weight.float()
    return (weight.float() + (b @ a) * layer.scaling[adapter_name]).to(weight.dtype)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def read_peft_lora_config(folder: str | Path) -> LoraConfig:
    """Read a vanilla PEFT LoRA adapter's config (for loading it as a named adapter)."""
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except ValueError as err:  # damaged JSON: the parser's message names no file
        raise ValueError(f"{Path(folder) / 'adapter_config.json'} is not a readable PEFT config ({err}).") from None
    if not isinstance(config, LoraConfig):
        raise ValueError(f"{folder} holds a {type(config).__name__}, not a LoRA adapter.")
    return config


def save_peft_lora(folder: Path, config: HybridConfig, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a vanilla PEFT LoRA adapter folder (loadable by ``peft.PeftModel.from_pretrained``)."""
    from peft_hybrid.modeling.serialization import WEIGHTS_NAME, write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    peft_lora_config(config).save_pretrained(str(folder))
    write_safetensors(folder / WEIGHTS_NAME, tensors)
    return folder


@contextlib.contextmanager
def merged_layers(model: nn.Module) -> Iterator[nn.Module]:
    """`merged_lora` without the bookkeeping: merge whatever adapter each LoRA layer has active."""
    swaps = []
    try:
        with torch.no_grad():
            for parent, child, layer in _lora_layers(model):
                linear = layer.get_base_layer()
                original = linear.weight
                merged = original
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        merged = merged_weight(layer, adapter, merged)
                linear.weight = nn.Parameter(merged, requires_grad=False)
                setattr(parent, child, linear)
                swaps.append((parent, child, layer, linear, original))
        yield model
    finally:
        for parent, child, layer, linear, original in reversed(swaps):
            linear.weight = original
            setattr(parent, child, layer)


def _lora_layers(model: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            if getattr(module, "merged", False):
                raise RuntimeError(f"LoRA layer {name} is already merged in place; unmerge it before merged_lora().")
            if not isinstance(module.get_base_layer(), nn.Linear):
                raise TypeError(
                    f"merged_lora supports LoRA on nn.Linear only; {name} wraps "
                    f"{type(module.get_base_layer()).__name__}."
                )
            parent_name, _, child = name.rpartition(".")
            found.append((model.get_submodule(parent_name), child, module))
    return found
