import copy

import peft
import torch

from helpers import SCALED_LORA, batch, tiny_model
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.modeling.lora import lora_layers, merged_weight
from peft_hybrid.offline import t5_from_preset


def test_vanilla_peft_loads_the_exported_lora_and_prompt(tmp_path):
    for mode in ("lora", "prompt"):
        model, tok = tiny_model(mode)
        inputs = batch(tok)
        written = model.export_peft(tmp_path / mode)
        assert set(written) == {mode}
        base, _ = t5_from_preset("tiny")
        vanilla = peft.PeftModel.from_pretrained(base, str(written[mode])).eval()
        with torch.no_grad():
            assert torch.equal(vanilla(**inputs).logits, model(**inputs).logits)


def test_hybrid_exports_both_parts(tmp_path):
    model, _ = tiny_model("hybrid")
    assert set(model.export_peft(tmp_path)) == {"lora", "prompt"}
    config = peft.PeftConfig.from_pretrained(str(tmp_path / "prompt"))
    assert config.num_transformer_submodules == 1 and config.num_virtual_tokens == 30


def test_start_a_hybrid_from_a_peft_lora_adapter(tmp_path):
    lora_model, tok = tiny_model("lora", r=2, lora_alpha=8)
    lora_model.export_peft(tmp_path)
    base, _ = t5_from_preset("tiny")
    hybrid = HybridModel.from_peft_lora(base, tmp_path / "lora", HybridConfig(mode="hybrid"), tokenizer=tok).eval()
    assert (hybrid.hybrid_config.r, hybrid.hybrid_config.lora_alpha) == (2, 8)
    assert hybrid.prompt.weight.shape == (30, 64) and hybrid.prompt.weight.requires_grad
    for key, value in lora_model.lora.tensors().items():
        assert torch.equal(hybrid.lora.tensors()[key], value)
    # With the prompt removed the hybrid is the LoRA model again.
    lora_only = HybridModel.from_peft_lora(
        t5_from_preset("tiny")[0], tmp_path / "lora", HybridConfig(mode="lora")
    ).eval()
    inputs = batch(tok)
    with torch.no_grad():
        assert torch.equal(lora_only(**inputs).logits, lora_model(**inputs).logits)


def test_the_merge_is_peft_s_own_and_scales_by_alpha_over_r():
    model, _ = tiny_model("lora", **SCALED_LORA)
    vanilla = copy.deepcopy(model)
    for (name, layer), (_, theirs) in zip(lora_layers(model).items(), lora_layers(vanilla).items(), strict=True):
        weight = layer.get_base_layer().weight
        ours = merged_weight(layer, "default", weight)
        theirs.merge(adapter_names=["default"])  # PEFT's own merge, in place
        assert torch.equal(ours, theirs.get_base_layer().weight), name
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert layer.scaling["default"] == 16 / 4
        assert torch.allclose(ours, weight + 4 * b @ a, atol=1e-6), name
        assert not torch.allclose(ours, weight + b @ a, atol=1e-3), name  # the scale matters here
