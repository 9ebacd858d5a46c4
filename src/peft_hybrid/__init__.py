"""peft_hybrid: LoRA + encoder soft prompt tuning for T5-family seq2seq models.

Example:
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.offline import t5_from_preset
    >>> base, tokenizer = t5_from_preset("tiny")
    >>> model = HybridModel(base, HybridConfig(mode="hybrid"), tokenizer=tokenizer)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public API, name -> the module it lives in. Imported on first use, so that importing the
# package (and `peft-hybrid --help`) does not load torch, transformers and datasets up front.
_EXPORTS = {
    "MODES": "config",
    "HybridConfig": "config",
    "InferenceSettings": "config",
    "HybridModel": "modeling.model",
    "BaseRevisionWarning": "modeling.loading",
    "AdapterLoadError": "serialization",
    "DataError": "tasks",
    "Task": "tasks",
    "get_task": "tasks",
    "list_tasks": "tasks",
    "register_task": "tasks",
    "HybridTrainer": "training.trainer",
    "HybridTrainingArguments": "training.arguments",
    "TrainingSummary": "training.callbacks",
    "latest_complete_checkpoint": "training.checkpoints",
    "AblationResult": "training.ablation",
    "run_ablation": "training.ablation",
    "cast_frozen_base_": "training.speed",
    "compile_model": "training.speed",
    "merged_lora": "inference",
    "fast_generation": "inference",
    "generate_texts": "inference",
    "load_for_inference": "inference",
    "CardData": "hub.card",
    "HubError": "hub.errors",
    "HubAccessError": "hub.errors",
    "HubAuthenticationError": "hub.errors",
    "HubUnavailableError": "hub.errors",
    "HubUnreachableError": "hub.errors",
    "push_folder": "hub.upload",
    "AttributionResult": "interpret.attribution",
    "attribute": "interpret.attribution",
    "ScriptArguments": "training.recipe",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'peft_hybrid' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
