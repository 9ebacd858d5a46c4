import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

from helpers import SCALED_LORA, batch, tiny_model
from peft_hybrid import MODES, HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset


@pytest.mark.parametrize("mode", MODES)
def test_save_load_round_trip_is_exact(mode, tmp_path):
    model, tok = tiny_model(mode)
    inputs = batch(tok)
    logits = model(**inputs).logits
    generated = model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=8
    )
    model.save_pretrained(tmp_path)

    base = None if mode == "full" else t5_from_preset("tiny")[0]
    loaded = HybridModel.from_pretrained(tmp_path, base_model=base).eval()
    assert torch.equal(loaded(**inputs).logits, logits)
    regenerated = loaded.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=8
    )
    assert torch.equal(regenerated, generated)
    assert loaded.hybrid_config == model.hybrid_config

    names = {p.name for p in tmp_path.iterdir()}
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))]
    assert {"hybrid_config.json", "adapter_model.safetensors", "README.md"} <= names
    assert ("model.safetensors" in names) == (mode == "full")


@pytest.mark.parametrize("mode", ["prompt", "lora", "hybrid"])
def test_adapter_file_holds_only_adapter_tensors(mode, tmp_path):
    from safetensors.torch import load_file

    model, _ = tiny_model(mode)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert set(saved) == set(model.adapter_tensors())
    assert ("prompt_embeddings" in saved) == (mode != "lora")
    assert all(k.startswith("base_model.model.") and ".lora_" in k for k in saved if k != "prompt_embeddings")
    assert sum(t.numel() for t in saved.values()) == model.num_parameters(trainable_only=True)


def test_training_by_hand_changes_adapter_and_leaves_base_bit_identical():
    model, tok = tiny_model("hybrid", perturb=False)
    model.train()
    adapter_ids = {id(p) for p in model.adapter_tensors().values()}
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in adapter_ids}
    adapter_before = {k: p.detach().clone() for k, p in model.adapter_tensors().items()}
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = batch(tok)
    losses = []
    for _ in range(5):
        loss = model(**inputs).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if id(p) not in adapter_ids)
    assert all(not torch.equal(p, adapter_before[k]) for k, p in model.adapter_tensors().items())
    assert {id(p) for p in model.parameters() if p.requires_grad} == adapter_ids


def test_soft_prompt_is_on_the_encoder_side_only():
    model, tok = tiny_model("prompt")
    inputs = batch(tok)
    enc = model.encoder_inputs(inputs["input_ids"], inputs["attention_mask"])
    n = model.hybrid_config.num_virtual_tokens
    assert enc["inputs_embeds"].shape[1] == inputs["input_ids"].shape[1] + n
    assert torch.equal(enc["attention_mask"][:, :n], torch.ones(2, n, dtype=enc["attention_mask"].dtype))
    out = model(**inputs, output_hidden_states=True)
    assert out.encoder_last_hidden_state.shape[1] == inputs["input_ids"].shape[1] + n
    assert out.logits.shape[1] == inputs["labels"].shape[1]


def test_inputs_embeds_and_input_ids_agree():
    model, tok = tiny_model("hybrid")
    inputs = batch(tok)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    a = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"])
    b = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=inputs["labels"])
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    g1 = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=5)
    g2 = model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=5)
    assert torch.equal(g1, g2)


def test_merge_keeps_outputs():
    model, tok = tiny_model("hybrid", **SCALED_LORA)
    inputs = batch(tok)
    logits = model(**inputs).logits
    generated = model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=8
    )
    merged = model.merge_and_unload()
    assert merged.lora is None and merged.prompt is not None
    # Float rounding: W + 4·B·A against x·W + 4·(x·A)·B; dropping the scale would move logits by ~0.1.
    assert (merged(**inputs).logits - logits).abs().max().item() <= 1e-4
    assert torch.equal(
        merged.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=8),
        generated,
    )
    with pytest.raises(ValueError, match="merged"):
        merged.save_pretrained("unused")


def test_mode_none_is_the_untouched_base():
    base, tok = t5_from_preset("tiny")
    reference, _ = t5_from_preset("tiny")
    model = HybridModel(base, HybridConfig(mode="none"))
    assert model.prompt is None and model.lora is None and model.num_parameters(True) == 0
    inputs = batch(tok)
    with torch.no_grad():  # same kernels on both sides: autograd can pick a different matmul path
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)


def test_missing_target_modules_lists_what_the_model_has():
    base, _ = t5_from_preset("tiny")
    with pytest.raises(ValueError) as err:
        HybridModel(base, HybridConfig(target_modules=["query", "value"]))
    message = str(err.value)
    assert "['query', 'value']" in message and "'q'" in message and "'wo'" in message


def test_non_t5_models_are_refused():
    bart = BartForConditionalGeneration(
        BartConfig(
            vocab_size=50,
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=16,
            decoder_ffn_dim=16,
        )
    )
    with pytest.raises(TypeError, match="T5-family"):
        HybridModel(bart)


def test_plain_t5_and_prompt_init_from_text():
    _, tok = t5_from_preset("tiny")
    base = T5ForConditionalGeneration(
        T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    )
    model = HybridModel(
        base,
        HybridConfig(prompt_init="text", prompt_init_text="summarize the dialogue", num_virtual_tokens=7),
        tokenizer=tok,
    )
    ids = tok("summarize the dialogue", add_special_tokens=False).input_ids
    expected = base.shared.weight[torch.tensor((ids * 7)[:7])]
    assert torch.equal(model.prompt.weight.data, expected)
