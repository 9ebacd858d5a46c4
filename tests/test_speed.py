"""Fast paths: merged-LoRA evaluation, bf16 frozen base, compiled stacks (tiny preset)."""

import pytest
import torch
from peft.tuners.lora import LoraLayer

from helpers import SCALED_LORA
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.inference import merged_lora
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.training.speed import cast_frozen_base_, compile_model, dynamo_counters


def _trained_looking(mode: str = "hybrid", dropout: float = 0.0) -> tuple[HybridModel, object]:
    base, tokenizer = t5_from_preset("tiny")
    model = HybridModel(base, HybridConfig(mode=mode, lora_dropout=dropout, **SCALED_LORA), tokenizer=tokenizer)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key, p in model.adapter_tensors().items():
            if "lora_B" in key:  # B starts at zero; make the merge change something
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval(), tokenizer


def _batch(tokenizer):
    texts = ["Amy: see you at 5?\nTom: sure, at the cafe", "Bob: running late, sorry"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    batch["labels"] = tokenizer(
        ["Amy and Tom meet at 5.", "Bob is late."], return_tensors="pt", padding=True
    ).input_ids
    return batch


def test_merged_lora_same_outputs_and_original_tensors_back():
    model, tokenizer = _trained_looking()
    batch = _batch(tokenizer)
    gen = dict(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=8, min_new_tokens=8
    )
    with torch.no_grad():
        logits = model(**batch).logits
    tokens = model.generate(**gen)
    params = dict(model.named_parameters())
    values = {name: p.detach().clone() for name, p in params.items()}
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}

    with merged_lora(model) as merged:
        assert merged is model
        assert not any(isinstance(m, LoraLayer) for m in model.modules())
        q = model.base_model.encoder.block[0].layer[0].SelfAttention.q
        original = params["base_model.encoder.block.0.layer.0.SelfAttention.q.base_layer.weight"]
        assert q.weight is not original and not torch.equal(q.weight, original)
        with torch.no_grad():
            merged_logits = model(**batch).logits
        merged_tokens = model.generate(**gen)

    assert (merged_logits - logits).abs().max().item() <= 1e-5
    assert torch.equal(merged_tokens, tokens)
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    for name, p in after.items():
        assert p is params[name], name  # the very same Parameter objects
        assert torch.equal(p, values[name]), name  # bit-identical, no merge/unmerge drift
    assert {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)} == layers
    assert torch.equal(model.generate(**gen), tokens)


def test_merged_lora_restores_after_an_error():
    model, _ = _trained_looking()
    params = dict(model.named_parameters())
    with pytest.raises(RuntimeError, match="boom"):
        with merged_lora(model):
            raise RuntimeError("boom")
    assert dict(model.named_parameters()) == params
    # q and v of 2 encoder self-attentions, 2 decoder self-attentions and 2 cross-attentions
    assert sum(isinstance(m, LoraLayer) for m in model.modules()) == 12


def test_merged_lora_without_lora_is_a_no_op():
    model, tokenizer = _trained_looking(mode="prompt")
    batch = _batch(tokenizer)
    with torch.no_grad():
        before = model(**batch).logits
        with merged_lora(model):
            inside = model(**batch).logits
    assert torch.equal(before, inside)


def test_cast_frozen_base_keeps_adapter_fp32_and_trains():
    model, tokenizer = _trained_looking(dropout=0.05)
    assert cast_frozen_base_(model, torch.bfloat16) is model
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert set(trainable) == {n for n, _ in model.named_parameters() if "lora_" in n or n.startswith("prompts.")}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    assert model.num_parameters(trainable_only=True) == sum(p.numel() for p in trainable.values())

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**_batch(tokenizer)).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())
    optimizer.step()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (name in trainable), name


def test_cast_frozen_base_refuses_full_mode():
    base, _ = t5_from_preset("tiny")
    with pytest.raises(ValueError, match="no frozen parameters"):
        cast_frozen_base_(HybridModel(base, HybridConfig(mode="full")))


def _loss(model, length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (2, length), generator=g)
    labels = torch.randint(3, 300, (2, 5), generator=g)
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss


def test_compiled_stacks_match_eager_without_recompiling_per_length():
    torch._dynamo.reset()
    model, _ = _trained_looking()
    with torch.no_grad():
        eager = [_loss(model, n, n).item() for n in (9, 14)]
    compile_model(model, backend="eager")  # dynamo tracing only: the fast CPU check
    with torch.no_grad():
        first = _loss(model, 9, 9).item()
        counts = dynamo_counters()
        second = _loss(model, 14, 14).item()  # a new source length, same compiled graphs
    assert counts["frames"] > 0 and counts["graph_breaks"] == 0
    assert dynamo_counters() == counts
    assert first == pytest.approx(eager[0], abs=1e-5) and second == pytest.approx(eager[1], abs=1e-5)
    assert "_orig_mod" not in "".join(model.state_dict())  # saved keys unchanged
    torch._dynamo.reset()


@pytest.mark.slow  # inductor builds C++ kernels: ~23 s on 2 idle cores, minutes under load
def test_inductor_compiled_training_step_matches_eager():
    torch._dynamo.reset()
    model, tokenizer = _trained_looking()
    batch = _batch(tokenizer)

    def loss_and_grad():
        model.zero_grad()
        loss = model(**batch).loss  # eval mode: no dropout, so the numbers must agree
        loss.backward()
        return loss.item(), model.prompt.weight.grad.clone()

    eager_loss, eager_grad = loss_and_grad()
    compile_model(model)
    compiled_loss, compiled_grad = loss_and_grad()
    assert compiled_loss == pytest.approx(eager_loss, abs=1e-4)
    torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-4, rtol=1e-3)
    torch._dynamo.reset()
