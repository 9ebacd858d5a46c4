"""HybridTrainer on a model holding several adapters: it trains, saves and resumes the active one only."""

from __future__ import annotations

import datasets
import torch

from helpers import FAST_TRAINING as FAST
from helpers import RESUME_RUN
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.offline.synthetic import dialogue_summary_pairs
from peft_hybrid.training.data import Seq2SeqCollator, tokenize_dataset
from peft_hybrid.training.trainer import HybridTrainer, HybridTrainingArguments


def _two_adapter_model():
    """Adapter "a" (hybrid, fixed random weights) loaded, adapter "b" (LoRA r=2, fresh) active."""
    base, tokenizer = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(num_virtual_tokens=4), tokenizer=tokenizer, adapter_name="a")
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for t in model.adapter_tensors("a").values():
            t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
    model.add_adapter("b", HybridConfig(mode="lora", r=2, target_modules=["q", "k", "v"]))
    model.set_adapter("b")
    return model, tokenizer


def _snapshot(tensors):
    return {k: v.detach().clone() for k, v in tensors.items()}


def _run(out, train, resume=None):
    model, tokenizer = _two_adapter_model()
    before = {
        "a": _snapshot(model.adapter_tensors("a")),
        "base": _snapshot({k: v for k, v in model.base_model.state_dict().items() if "lora_" not in k}),
        "b": _snapshot(model.adapter_tensors("b")),
    }
    args = HybridTrainingArguments(
        output_dir=str(out),
        eval_strategy="no",
        load_best_model_at_end=False,
        early_stopping_patience=None,
        **RESUME_RUN,
        **FAST,
    )
    trainer = HybridTrainer(
        model, args, train_dataset=train, processing_class=tokenizer, data_collator=Seq2SeqCollator(tokenizer)
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    return model, before


def test_training_b_leaves_a_and_the_base_bit_identical_and_resumes_exactly(tmp_path):
    _, tokenizer = _two_adapter_model()
    rows = datasets.Dataset.from_list(
        [{"input_text": r["dialogue"], "target": r["summary"]} for r in dialogue_summary_pairs(40, 0)]
    )
    train, _ = tokenize_dataset(rows, tokenizer, 64, 24)
    model, before = _run(tmp_path / "straight", train)
    assert model.active_adapter == "b" and list(model.adapters) == ["a", "b"]
    after_a = model.adapter_tensors("a")
    assert all(torch.equal(after_a[k], before["a"][k]) for k in before["a"])
    base = {k: v for k, v in model.base_model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], before["base"][k]) for k in before["base"])
    after_b = model.adapter_tensors("b")
    assert all(not torch.equal(after_b[k], before["b"][k]) for k in after_b if ".lora_B." in k)

    checkpoint = tmp_path / "straight" / "checkpoint-7"
    saved = HybridModel.from_pretrained(checkpoint, t5_from_preset("tiny", seed=0)[0])
    assert saved.hybrid_config.mode == "lora" and saved.hybrid_config.r == 2  # the checkpoint holds "b" only
    assert "prompt_embeddings" not in saved.adapter_tensors()
    assert (checkpoint / "README.md").is_file() and (checkpoint / CONFIG_NAME).is_file()

    resumed, _ = _run(tmp_path / "resumed", train, resume=str(checkpoint))
    straight_b, resumed_b = model.adapter_tensors("b"), resumed.adapter_tensors("b")
    assert all(torch.equal(straight_b[k], resumed_b[k]) for k in straight_b)
    assert all(torch.equal(resumed.adapter_tensors("a")[k], before["a"][k]) for k in before["a"])
    final = HybridModel.from_pretrained(tmp_path / "straight", t5_from_preset("tiny", seed=0)[0])
    assert all(torch.equal(final.adapter_tensors()[k], straight_b[k]) for k in straight_b)


def test_adding_an_adapter_keeps_the_active_one_trainable_and_the_trainer_trains_it(tmp_path):
    """add_adapter/load_adapter leave the new adapter frozen and the active one trainable (they used to swap)."""
    base, tokenizer = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(mode="lora", r=2), tokenizer=tokenizer, adapter_name="a")
    model.add_adapter("b", HybridConfig(mode="hybrid", r=2, num_virtual_tokens=3))
    folder = tmp_path / "b"
    model.save_pretrained(folder, adapter_names=["b"])
    model.load_adapter(folder, "c")
    assert model.active_adapter == "a"
    assert all(t.requires_grad for t in model.adapter_tensors("a").values())
    assert not any(t.requires_grad for name in ("b", "c") for t in model.adapter_tensors(name).values())
    rows = datasets.Dataset.from_list(
        [{"input_text": r["dialogue"], "target": r["summary"]} for r in dialogue_summary_pairs(8, 0)]
    )
    train, _ = tokenize_dataset(rows, tokenizer, 64, 24)
    before = _snapshot(model.adapter_tensors("a"))
    args = HybridTrainingArguments(
        output_dir=str(tmp_path / "run"),
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        early_stopping_patience=None,
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        **FAST,
    )
    HybridTrainer(
        model, args, train_dataset=train, processing_class=tokenizer, data_collator=Seq2SeqCollator(tokenizer)
    ).train()
    after = model.adapter_tensors("a")
    assert any(not torch.equal(after[k], before[k]) for k in before if ".lora_B." in k)
    model.set_adapter("b")
    assert all(t.requires_grad for t in model.adapter_tensors("b").values())
    assert not any(t.requires_grad for name in ("a", "c") for t in model.adapter_tensors(name).values())
