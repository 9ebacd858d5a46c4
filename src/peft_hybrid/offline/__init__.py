"""Offline building blocks for tests, benchmarks and the demo: exact-shape random models.

Names load on first use, so that the Hub test server (``peft_hybrid.hub_server.server``)
starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"PRESETS": "presets", "offline_tokenizer": "presets", "t5_from_preset": "presets"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'peft_hybrid.offline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
