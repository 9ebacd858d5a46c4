"""Vanilla PEFT LoRA folders as hybrid adapters: every `LoraConfig` field honoured or refused by name.

A folder saved by ``get_peft_model(base, LoraConfig(...)).save_pretrained(...)`` loads as a mode
``lora`` adapter (or adds LoRA to a ``hybrid`` one). Each field of its ``adapter_config.json``
falls in one of three groups:

- honoured (`HONOURED`): the rank, alpha, targets and dropout, ``use_rslora``, ``rank_pattern``,
  ``alpha_pattern`` and ``use_dora`` become `HybridConfig` fields, so the adapter computes what
  ``PeftModel`` computes; a regular-expression ``target_modules`` is honoured when it selects whole
  module names (every ``q`` and ``v``, say), refused otherwise;
- bookkeeping (`NO_EFFECT`): fields that do not change what a loaded adapter computes;
- everything else must hold `LoraConfig`'s default, else the load is refused naming the field
  (a field a newer PEFT added counts as everything else).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import CONFIG_NAME as PEFT_CONFIG_NAME
from torch import nn

from peft_hybrid.config import HybridConfig
from peft_hybrid.modeling.lora import _base_linears
from peft_hybrid.modeling.serialization import WEIGHTS_NAME, AdapterLoadError, load_adapter_tensors_file

# LoraConfig field -> HybridConfig field.
HONOURED = {
    "r": "r",
    "lora_alpha": "lora_alpha",
    "target_modules": "target_modules",
    "lora_dropout": "lora_dropout",
    "use_rslora": "use_rslora",
    "rank_pattern": "rank_pattern",
    "alpha_pattern": "alpha_pattern",
    "use_dora": "use_dora",
    "base_model_name_or_path": "base_model_name_or_path",
    "revision": "revision",
}
# Bookkeeping: the saved tensors replace whatever init_lora_weights drew, but only for the
# initialisations that leave the base as it was (PiSSA, OLoRA, LoftQ, ... change the base itself).
NO_EFFECT = ("task_type", "peft_type", "auto_mapping", "peft_version", "inference_mode", "runtime_config")
_PLAIN_INITS = (True, False, "gaussian")


def read_peft_lora_config(folder: str | Path) -> LoraConfig:
    """Read a vanilla PEFT LoRA adapter's config, refusing any field this package would not honour."""
    path = Path(folder) / PEFT_CONFIG_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterLoadError(f"{path} is not a readable PEFT adapter config ({err}).") from None
    if not isinstance(raw, dict) or raw.get("peft_type", "LORA") != "LORA":
        kind = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise AdapterLoadError(f"{path} holds a {kind} adapter, not a LoRA adapter; peft_hybrid reads PEFT LoRA.")
    check_lora_fields(raw, str(path))
    return LoraConfig.from_pretrained(str(folder))


def check_lora_fields(raw: dict[str, Any], source: str) -> None:
    """Refuse every field of a saved LoraConfig that is neither honoured, bookkeeping, nor at its default."""
    defaults = {f.name: f for f in dataclasses.fields(LoraConfig)}
    refused = []
    for key, value in sorted(raw.items()):
        if key in HONOURED or key in NO_EFFECT:
            continue
        if key == "init_lora_weights":
            if value not in _PLAIN_INITS:
                refused.append(f"init_lora_weights={value!r} (it changes the base weights too)")
            continue
        if key not in defaults:
            if value not in (None, False, {}, []):
                refused.append(f"{key}={value!r} (a field this PEFT version does not know)")
            continue
        default = _default(defaults[key])
        if value != default and not (value in (None, {}, []) and default in (None, {}, [])):
            refused.append(f"{key}={value!r} (default {default!r})")
    if refused:
        raise AdapterLoadError(
            f"{source} sets LoraConfig field(s) that peft_hybrid does not support: {'; '.join(refused)}. It honours "
            f"{', '.join(sorted(HONOURED))}; load this adapter with peft.PeftModel instead, or retrain without them."
        )


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return field.default


def target_names(target_modules: Any, base_model: nn.Module, source: str) -> list[str]:
    """``target_modules`` as module names: a list as is; a regex when it selects whole names, else refused."""
    if not isinstance(target_modules, str):
        return sorted(target_modules)
    linears = list(_base_linears(base_model))
    try:
        matched = {name for name in linears if re.fullmatch(target_modules, name)}
    except re.error as err:
        raise AdapterLoadError(f"{source}: target_modules={target_modules!r} is not a valid regex ({err}).") from None
    leaves = sorted({name.rsplit(".", 1)[-1] for name in matched})
    by_leaf = {name for name in linears if name.rsplit(".", 1)[-1] in leaves}
    if not matched or by_leaf != matched:
        raise AdapterLoadError(
            f"{source}: target_modules is the regular expression {target_modules!r}, which selects "
            f"{len(matched)} of the base's {len(by_leaf)} Linear layers named {leaves or '(none)'}. peft_hybrid "
            "adapts every Linear of a name (target_modules as a list such as ['q', 'v']); load this adapter with "
            "peft.PeftModel instead, or retrain it with a list of names."
        )
    return leaves


def peft_lora_as_hybrid(
    folder: Path, base_model: nn.Module, config: HybridConfig | None = None, *, allow_nonfinite: bool = False
) -> tuple[HybridConfig, dict[str, torch.Tensor], str]:
    """A vanilla PEFT LoRA folder as a hybrid config + tensors; ``config`` (default mode lora) adds a prompt.

    The LoRA settings (`HONOURED`) come from the PEFT adapter; ``base_model`` resolves a regex
    ``target_modules``.
    """
    peft_config = read_peft_lora_config(folder)
    source = folder / WEIGHTS_NAME
    settings: dict[str, Any] = vars(config) if config is not None else {"mode": "lora"}
    lora_settings = {ours: getattr(peft_config, theirs) for theirs, ours in HONOURED.items()}
    lora_settings["target_modules"] = target_names(peft_config.target_modules, base_model, str(folder))
    config = HybridConfig(**{**settings, **lora_settings})
    if not config.uses_lora:
        raise ValueError(f"A PEFT LoRA adapter needs a mode with LoRA ('lora' or 'hybrid'), not {config.mode!r}.")
    return config, load_adapter_tensors_file(source, allow_nonfinite=allow_nonfinite), str(source)
