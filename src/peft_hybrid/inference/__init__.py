"""Loading a saved adapter for use, applying its saved inference settings, and batched generation.

An adapter folder records how its run formatted inputs and generated (`HybridConfig.inference`);
`model_inputs`, `source_length` and `generation_settings` are the one place that applies them, for
``peft-hybrid evaluate``/``predict``/``attribute`` and serving alike. An argument given explicitly
overrides the saved value; ``None`` means "not given".

One home for "which adapter, which tokenizer" shared by the recipes, ``peft-hybrid evaluate`` /
``predict`` and the attribution command; the base comes from the one resolver,
`peft_hybrid.modeling.loading` (a Hub id, a local folder, or an offline preset). Hub ids are
checked with `peft_hybrid.hub.access.require_hub` first, so an offline machine fails at once with
advice (an adapter already in the local Hub cache passes under ``HF_HUB_OFFLINE=1``).

Example:
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.inference import generate_texts, load_for_inference
    >>> from peft_hybrid.modeling.loading import load_base
    >>> base, tokenizer = load_base(preset="tiny")
    >>> model = HybridModel(base, HybridConfig(), tokenizer=tokenizer)
    >>> _ = model.save_pretrained("adapter")
    >>> texts = generate_texts(model.eval(), tokenizer, ["Amy: see you at 5?"], max_new_tokens=8, progress=False)
    >>> reloaded, tokenizer = load_for_inference("adapter")
    >>> generate_texts(reloaded, tokenizer, ["Amy: see you at 5?"], max_new_tokens=8, progress=False) == texts
    True
"""

from peft_hybrid.inference.fast import GenerationBuckets, fast_generation
from peft_hybrid.inference.generate import evaluate_rows, generate_texts
from peft_hybrid.inference.loading import load_for_inference
from peft_hybrid.inference.merged import merged_lora
from peft_hybrid.inference.settings import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_SOURCE_LENGTH,
    generation_settings,
    model_inputs,
    source_length,
)

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_MAX_SOURCE_LENGTH",
    "GenerationBuckets",
    "evaluate_rows",
    "fast_generation",
    "generate_texts",
    "generation_settings",
    "load_for_inference",
    "merged_lora",
    "model_inputs",
    "source_length",
]
