"""DoRA, the third adapter part: train, save/load, PEFT folders both ways, mixed batches, merge."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.inference import merged_lora
from peft_hybrid.offline import t5_from_preset

TEXTS = ["Amy: Hi Ben! Are you free tomorrow? Ben: Sure, after five.", "Sam: late.", "Tom: the bus is late again"]
DORA = dict(mode="lora", use_dora=True, r=4, lora_alpha=8, lora_dropout=0.0)


def _perturb(tensors, seed, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors.values():
            t.add_(torch.randn(t.shape, generator=gen) * scale)


def _labels(tok, n):
    labels = tok(["Amy meets Ben.", "Sam is late.", "The bus"][:n], return_tensors="pt", padding=True).input_ids
    labels[labels == tok.pad_token_id] = -100
    return labels


def _dora_model(**extra):
    base, tok = t5_from_preset("tiny", seed=0)
    plain = copy.deepcopy(base).eval()
    model = HybridModel(base, HybridConfig(**{**DORA, **extra}), tokenizer=tok)
    _perturb(model.adapter_tensors(), 1)
    return model.eval(), plain, tok


def test_dora_part_holds_a_magnitude_per_output_channel_and_starts_at_the_base():
    base, tok = t5_from_preset("tiny", seed=0)
    plain = copy.deepcopy(base).eval()
    model = HybridModel(base, HybridConfig(**DORA), tokenizer=tok).eval()
    magnitudes = {k: v for k, v in model.adapter_tensors().items() if k.endswith(".lora_magnitude_vector")}
    assert len(magnitudes) == 12 and all(v.shape == (64,) and v.requires_grad for v in magnitudes.values())
    assert model.lora.kind == "dora" and model.num_parameters(True) == 12 * (2 * 4 * 64 + 64)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    labels = _labels(tok, 3)
    torch.testing.assert_close(model(**batch, labels=labels).logits, plain(**batch, labels=labels).logits)


def test_dora_trains_its_magnitude_and_matrices_and_leaves_the_base_alone():
    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(**DORA), tokenizer=tok).train()
    frozen = {k: v.clone() for k, v in model.base_model.state_dict().items() if "lora_" not in k}
    before = {k: v.detach().clone() for k, v in model.adapter_tensors().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch, labels=_labels(tok, 3)).loss.backward()
        optimizer.step()
    after = model.adapter_tensors()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) == len(before) == 36  # A, B and the magnitude of every adapted layer
    state = model.base_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())


def test_dora_save_load_round_trip_is_identical(tmp_path):
    model, plain, tok = _dora_model()
    model.save_pretrained(tmp_path / "dora")
    loaded = HybridModel.from_pretrained(tmp_path / "dora", copy.deepcopy(plain)).eval()
    assert loaded.hybrid_config.use_dora is True
    for key, value in model.adapter_tensors().items():
        assert torch.equal(loaded.adapter_tensors()[key], value), key
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    assert torch.equal(loaded(**batch, labels=_labels(tok, 3)).logits, model(**batch, labels=_labels(tok, 3)).logits)


def _peft_dora_folder(tmp_path, plain, **lora):
    settings = dict(r=4, lora_alpha=8, target_modules=["q", "v"], use_dora=True, task_type="SEQ_2_SEQ_LM")
    peft_model = get_peft_model(copy.deepcopy(plain), LoraConfig(**{**settings, **lora}))
    _perturb({n: p for n, p in peft_model.named_parameters() if "lora_" in n}, 5)
    peft_model.save_pretrained(tmp_path / "peft")
    return tmp_path / "peft", peft_model.eval()


def test_a_vanilla_peft_dora_folder_gives_peftmodels_logits(tmp_path):
    base, tok = t5_from_preset("tiny", seed=0)
    plain = copy.deepcopy(base).eval()
    folder, _ = _peft_dora_folder(tmp_path, plain)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(plain), str(folder)).eval()
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    labels = _labels(tok, 3)
    want = peft_model(**batch, labels=labels).logits
    assert (want - plain(**batch, labels=labels).logits).abs().max() > 0.05  # the adapter does something
    ours = HybridModel.from_peft_lora(copy.deepcopy(plain), folder, HybridConfig(mode="lora")).eval()
    assert ours.hybrid_config.use_dora and ours.lora.kind == "dora"
    torch.testing.assert_close(ours(**batch, labels=labels).logits, want, atol=1e-5, rtol=0)
    host = HybridModel(copy.deepcopy(plain), HybridConfig(mode="prompt", num_virtual_tokens=3)).eval()
    host.load_adapter(folder, "dora")
    torch.testing.assert_close(
        host(**batch, labels=labels, adapter_names=["dora"] * 3).logits, want, atol=1e-5, rtol=0
    )


def test_exported_dora_folder_loads_in_peftmodel_with_the_same_logits(tmp_path):
    model, plain, tok = _dora_model()
    written = model.export_peft(tmp_path / "export")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(plain), str(written["lora"])).eval()
    assert peft_model.peft_config["default"].use_dora is True
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    labels = _labels(tok, 3)
    torch.testing.assert_close(
        peft_model(**batch, labels=labels).logits, model(**batch, labels=labels).logits, atol=1e-5, rtol=0
    )


def test_mixed_batch_dora_rows_equal_each_row_alone():
    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(**DORA), tokenizer=tok, adapter_name="dora")
    model.add_adapter("lora", HybridConfig(mode="lora", r=2, lora_alpha=4, lora_dropout=0.0))
    model.add_adapter("hdora", HybridConfig(**{**DORA, "mode": "hybrid", "num_virtual_tokens": 5}))
    for seed, name in enumerate(model.adapters):
        _perturb(model.adapter_tensors(name), seed + 20)
    model.eval()
    names = ["dora", "lora", "hdora", "__base__", "dora", "hdora"]
    texts = TEXTS * 2
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = _labels(tok, 3).repeat(2, 1)
    logits = model(**batch, labels=labels, adapter_names=names).logits
    generated = model.generate(**batch, adapter_names=names, max_new_tokens=8)
    for row, (name, text) in enumerate(zip(names, texts)):
        inputs = tok([text], return_tensors="pt")
        own = labels[row : row + 1, : int((labels[row] != -100).sum())]
        want = model(**inputs, labels=own, adapter_names=[name]).logits[0]
        torch.testing.assert_close(logits[row, : own.shape[1]], want, atol=1e-5, rtol=0)
        solo = model.generate(**inputs, adapter_names=[name], max_new_tokens=8)[0]
        assert torch.equal(generated[row, : len(solo)], solo), f"row {row} ({name})"


@pytest.mark.parametrize("how", ["merge_and_unload", "merged_lora"])
def test_merged_dora_equals_unmerged(how):
    model, _, tok = _dora_model(mode="hybrid", num_virtual_tokens=4)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    labels = _labels(tok, 3)
    want = model(**batch, labels=labels).logits
    if how == "merged_lora":
        with merged_lora(model):
            got = model(**batch, labels=labels).logits
    else:
        got = model.merge_and_unload()(**batch, labels=labels).logits
        assert model.lora is None and model.prompt is not None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_use_dora_needs_a_mode_with_lora():
    with pytest.raises(ValueError, match=r"use_dora=True needs a mode with LoRA .*not 'prompt'"):
        HybridConfig(mode="prompt", use_dora=True)
