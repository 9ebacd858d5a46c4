"""Thin glue over PEFT's LoRA layers: inject per adapter name, PEFT key names, the one merge, export.

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
from peft.utils.other import get_pattern_key
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
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
        rank_pattern=dict(config.rank_pattern),
        alpha_pattern=dict(config.alpha_pattern),
        bias="none",
        task_type="SEQ_2_SEQ_LM",
        base_model_name_or_path=config.base_model_name_or_path,
        revision=config.revision,
    )


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every PEFT LoRA layer inside ``model``, by module name."""
    return {name: m for name, m in base_modules(model) if isinstance(m, LoraLayer)}


def base_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` without the insides of its LoRA layers (their per-adapter matrices).

    A walk over the base's own modules then costs the same however many adapters the layers hold
    (``named_modules`` visits every adapter's A, B and dropout: a thousand adapters, tens of
    thousands of modules per walk).
    """
    seen: set[int] = set()
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        if isinstance(module, LoraLayer):
            continue
        children = [(f"{name}.{child}" if name else child, m) for child, m in module.named_children()]
        stack.extend(reversed(children))


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
    found = {}
    for name, module in base_modules(model):
        if isinstance(module, LoraLayer):
            module = module.get_base_layer()
        if isinstance(module, nn.Linear):
            found[name] = module
    return found


def expected_shapes(model: nn.Module, config: HybridConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the LoRA tensors an adapter for ``model`` must hold, keyed as PEFT saves them.

    A module's rank is ``config.r`` unless ``rank_pattern`` names it (PEFT's own pattern match).
    """
    shapes = {}
    for name, linear in target_linears(model, config).items():
        r = config.rank_pattern.get(get_pattern_key(list(config.rank_pattern), name), config.r)
        shapes[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (r, linear.in_features)
        shapes[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (linear.out_features, r)
    return shapes


def inject(model: nn.Module, config: HybridConfig, adapter_name: str) -> None:
    """Add ``adapter_name``'s LoRA (or DoRA) to PEFT's layers in ``model``; what was active stays active.

    When every target is already a PEFT LoRA layer (another adapter wraps it), the new adapter is
    added to those layers directly, as PEFT's injection does for a wrapped layer
    (``LoraLayer.update_layer``): PEFT's own injection walks and snapshots every module and
    parameter of the model, every adapter's included, so the thousandth adapter would cost a
    thousand times the first.
    """
    targets = target_linears(model, config)  # fail before touching the model
    layers = lora_layers(model)
    active = {name: list(layer.active_adapters) for name, layer in layers.items()}
    peft_config = peft_lora_config(config)
    if all(getattr(type(layers.get(name)), "update_layer", None) is LoraLayer.update_layer for name in targets):
        for name in targets:
            r = peft_config.rank_pattern.get(get_pattern_key(list(peft_config.rank_pattern), name), peft_config.r)
            alpha_key = get_pattern_key(list(peft_config.alpha_pattern), name)
            alpha = peft_config.alpha_pattern.get(alpha_key, peft_config.lora_alpha)
            with _holding_only_new(layers[name]):
                layers[name].update_layer(adapter_name, r, lora_alpha=alpha, target_name=name, config=peft_config)
        if not isinstance(getattr(model, "peft_config", None), dict):
            model.peft_config = {}
        model.peft_config[adapter_name] = peft_config
    else:
        with warnings.catch_warnings():
            # Several adapters on one model is the point here, not the accident PEFT warns about.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(peft_config, model, adapter_name=adapter_name)
        layers = lora_layers(model)
    for name, layer in layers.items():  # injecting activates the new adapter everywhere
        set_active(layer, active.get(name, []))
        if adapter_name in layer.lora_dropout:  # a new dropout starts in train mode: follow its layer's
            layer.lora_dropout[adapter_name].train(layer.training)


@contextlib.contextmanager
def _holding_only_new(layer: LoraLayer) -> Iterator[None]:
    """The layer's per-adapter tables emptied for the block, the other adapters' entries put back after.

    ``update_layer`` visits every adapter a layer holds (each one's ``requires_grad``, each one's
    device), which makes the N-th adapter cost N; with the others set aside it sees one.
    """
    names = layer.adapter_layer_names
    held = {}
    for attribute in dict.fromkeys(names + layer.other_param_names):
        table = getattr(layer, attribute, None)
        if isinstance(table, (nn.ModuleDict, dict)):
            held[attribute] = table
            setattr(layer, attribute, type(table)())
    try:
        yield
    finally:
        for attribute, table in held.items():
            for key, value in getattr(layer, attribute).items():
                table[key] = value
            setattr(layer, attribute, table)
        # DoRA adds its table's name when the layer's table is empty, as it was for the block
        layer.adapter_layer_names = tuple(dict.fromkeys(names + layer.adapter_layer_names))


def remove(model: nn.Module, adapter_name: str) -> None:
    """Drop an adapter's matrices; a layer left with no adapter becomes its plain Linear again."""
    for name, layer in lora_layers(model).items():
        if adapter_name not in layer.lora_A:
            continue
        for attribute in layer.adapter_layer_names + layer.other_param_names:
            held = getattr(layer, attribute)
            if adapter_name in held:
                del held[adapter_name]
        if not layer.lora_A:
            _replace(model, name, layer.get_base_layer())
    peft_configs = getattr(model, "peft_config", None)
    if isinstance(peft_configs, dict):
        peft_configs.pop(adapter_name, None)
        if not peft_configs:
            del model.peft_config


@torch.no_grad()
def merge_and_unload(model: nn.Module, adapter_name: str) -> None:
    """Fold one adapter into each wrapped Linear and put the plain Linears back."""
    for name, layer in lora_layers(model).items():
        linear = layer.get_base_layer()
        if adapter_name in layer.lora_A:
            linear.weight.data = merged_weight(layer, adapter_name, linear.weight)
        _replace(model, name, linear)


def merged_weight(layer: LoraLayer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
    """``W + ΔW`` for one adapter of one layer, with PEFT's own ``ΔW = scale · B @ A`` (``get_delta_weight``).

    Added in fp32 and stored in W's dtype (a bf16 frozen base stays bf16). A DoRA adapter (PEFT's
    ``lora_magnitude_vector``) also rescales each output row to its magnitude:
    ``m / ‖W + ΔW‖ · (W + ΔW)``, the norm taken per output channel as PEFT's forward does.
    The one merge of the package: the parts' ``merge`` and `peft_hybrid.inference.merged_lora`
    both use it, so merged and unmerged generation cannot drift apart.
    """
    merged = weight.float() + layer.get_delta_weight(adapter_name).float()
    if adapter_name in layer.lora_magnitude_vector:
        magnitude = layer.lora_magnitude_vector[adapter_name].weight.float()
        merged = merged * (magnitude / torch.linalg.norm(merged, dim=1)).unsqueeze(1)
    return merged.to(weight.dtype)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def save_peft_lora(folder: Path, config: HybridConfig, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a vanilla PEFT LoRA adapter folder (loadable by ``peft.PeftModel.from_pretrained``)."""
    from peft_hybrid.serialization import WEIGHTS_NAME, write_safetensors

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
    for name, module in base_modules(model):
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
