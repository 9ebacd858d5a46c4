"""Offline building blocks for tests, benchmarks and the demo: exact-shape random models."""
from .presets import PRESETS, offline_tokenizer, t5_from_preset

__all__ = ["PRESETS", "offline_tokenizer", "t5_from_preset"]
