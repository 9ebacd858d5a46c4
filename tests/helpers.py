"""Small builders shared by the tests."""

import torch

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset

TEXTS = ["Amy: Hi Ben! Are you free tomorrow?\r\nBen: Sure.", "Sam: I'll be 10 minutes late."]
TARGETS = ["Amy and Ben meet tomorrow.", "Sam is late."]


def tiny_model(mode: str = "hybrid", seed: int = 0, perturb: bool = True, **config) -> tuple[HybridModel, object]:
    """A tiny HybridModel whose adapter is moved off its initial values (LoRA B starts at zero)."""
    base, tok = t5_from_preset("tiny", seed=seed)
    model = HybridModel(base, HybridConfig(mode=mode, lora_dropout=0.0, **config), tokenizer=tok)
    if perturb:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.adapter_tensors().values():
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval(), tok


def batch(tok, texts=TEXTS, targets=TARGETS) -> dict:
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = tok(targets, return_tensors="pt", padding=True).input_ids
    labels[labels == tok.pad_token_id] = -100
    return {**enc, "labels": labels}
