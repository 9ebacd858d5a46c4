"""Loading a base model: from a Hub id, a local folder, or an offline preset (``preset:NAME``)."""

from __future__ import annotations

from torch import nn

from peft_hybrid.hub.access import require_hub

PRESET_PREFIX = "preset:"
# The preset base is random: the same seed everywhere makes "preset:tiny" name one model.
PRESET_SEED = 0


def load_base(
    name_or_path: str | None = None,
    *,
    revision: str | None = None,
    preset: str | None = None,
    token: str | bool | None = None,
):
    """``(base_model, tokenizer)`` from a preset name, a ``preset:<name>`` string, a folder or a Hub id.

    Only safetensors weights are read and remote code never runs.
    """
    from transformers import AutoTokenizer

    if preset is None and name_or_path and name_or_path.startswith(PRESET_PREFIX):
        preset = name_or_path[len(PRESET_PREFIX) :]
    if preset is not None:
        from peft_hybrid.offline import t5_from_preset

        return t5_from_preset(preset, seed=PRESET_SEED)
    if not name_or_path:
        raise ValueError(
            "No base model: pass a Hub id or folder (--model_name_or_path / --base) or --model_preset tiny."
        )
    require_hub(f"base model {name_or_path!r}", name_or_path, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, token=token)
    return load_base_model(name_or_path, revision=revision, token=token), tokenizer


def load_base_model(
    name_or_path: str | None, revision: str | None = None, token: str | bool | None = None
) -> nn.Module:
    """Load a T5-family base from a folder or Hub id: safetensors only, never remote code."""
    if not name_or_path:
        raise ValueError("The adapter config names no base model; pass base_model=... to from_pretrained.")
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, revision=revision, token=token, use_safetensors=True)
