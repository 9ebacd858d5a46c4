"""Model cards for saved adapters, rendered from the Jinja templates in ``model_cards/``."""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

TEMPLATES = Path(__file__).resolve().parent / "model_cards"

METHOD_SUMMARIES = {
    "none": "the untouched base model (no trainable parameters), the baseline row of the ablation.",
    "prompt": "soft prompt tuning: trainable vectors prepended to the encoder input of a frozen base.",
    "lora": "LoRA: low-rank updates to the attention projections of a frozen base.",
    "hybrid": "LoRA on the attention projections plus a soft prompt prepended to the encoder input, on a frozen base.",
    "full": "full fine-tuning of every base weight.",
}


def render_card_stub(model, repo_id: str | None = None) -> str:
    """A minimal card: what the adapter is, its size, and how to load it."""
    config = model.hybrid_config
    base = config.base_model_name_or_path or "unknown"
    trainable, total = model.num_parameters(trainable_only=True), model.num_parameters()
    data = ModelCardData(
        base_model=base if "/" in base and not Path(base).exists() else None,
        library_name="peft-hybrid",
        tags=["peft-hybrid", "lora", "prompt-tuning"],
        pipeline_tag="text2text-generation",
    )
    card = ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "adapter_card.md"),
        title=f"{config.mode} adapter for {base}",
        base_model=base,
        base_model_url=f"https://huggingface.co/{base}",
        method_summary=METHOD_SUMMARIES[config.mode],
        mode=config.mode,
        trainable_params=trainable,
        total_params=total,
        trainable_percent=100.0 * trainable / max(total, 1),
        repo_id=repo_id or "path/to/adapter",
    )
    return str(card)
