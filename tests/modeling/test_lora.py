import copy

import peft
import torch
from peft.tuners.lora import LoraLayer

from helpers import SCALED_LORA, batch, tiny_model
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.modeling.lora import base_modules, lora_layers, merged_weight, peft_lora_config, set_active
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


def _layer_entries(layer, name):
    """What a LoRA layer holds for adapter ``name``: numbers as they are, modules by type and tensors."""
    out = {}
    for attribute in (*layer.adapter_layer_names, *layer.other_param_names, "use_dora", "lora_bias", "use_rslora"):
        table = getattr(layer, attribute)
        if name in table:
            entry = table[name]
            if isinstance(entry, torch.nn.Module):
                entry = (type(entry).__name__, {k: v.shape for k, v in entry.state_dict().items()})
            out[attribute] = entry
    return out


def test_an_adapter_added_to_wrapped_layers_matches_peft_s_own_injection():
    """The second adapter goes into the layers directly; PEFT's injection would build the same."""
    configs = [
        HybridConfig(mode="lora", lora_dropout=0.1, rank_pattern={"q": 3}, alpha_pattern={"v": 5}),
        HybridConfig(mode="lora", use_dora=True, r=2),
        HybridConfig(mode="lora", use_rslora=True, target_modules=("q", "v", "o")),
    ]
    for config in configs:
        for first in (HybridConfig(mode="lora"), HybridConfig(mode="lora", use_dora=True)):
            ours = HybridModel(t5_from_preset("tiny")[0], first)
            theirs = copy.deepcopy(ours)
            ours.add_adapter("b", config)
            peft.inject_adapter_in_model(peft_lora_config(config), theirs.base_model, adapter_name="b")
            mine, peft_layers = lora_layers(ours.base_model), lora_layers(theirs.base_model)
            assert mine.keys() == peft_layers.keys()
            x = torch.randn(2, 3, 64)
            for key, layer in mine.items():
                other = peft_layers[key]
                assert _layer_entries(layer, "b") == _layer_entries(other, "b"), key
                assert set(layer.adapter_layer_names) == set(other.adapter_layer_names), key
                if "b" not in layer.lora_A:
                    continue
                other.load_state_dict(layer.state_dict())
                set_active(layer, ["b"]), set_active(other, ["b"])
                layer.eval(), other.eval()
                with torch.no_grad():
                    assert torch.equal(layer(x[..., : layer.in_features]), other(x[..., : other.in_features])), key


def test_adding_an_adapter_shows_peft_s_layer_update_only_the_new_one(monkeypatch):
    """PEFT's ``update_layer`` visits every adapter a layer holds: it sees none of the loaded ones."""
    model = HybridModel(t5_from_preset("tiny")[0], HybridConfig(mode="lora"))
    model.add_adapter("b", HybridConfig(mode="hybrid"))
    seen = []
    original = LoraLayer.update_layer

    def spy(self, adapter_name, *args, **kwargs):
        seen.append((adapter_name, sorted(self.lora_A), sorted(self.scaling), sorted(self.lora_dropout)))
        return original(self, adapter_name, *args, **kwargs)

    monkeypatch.setattr(LoraLayer, "update_layer", spy)
    model.add_adapter("c", HybridConfig(mode="lora", use_dora=True))
    layers = lora_layers(model.base_model)
    assert seen == [("c", [], [], [])] * len(layers)
    for layer in layers.values():
        assert sorted(layer.lora_A) == sorted(layer.scaling) == ["b", "c", "default"]
        assert list(layer.lora_magnitude_vector) == ["c"]
        assert layer.adapter_layer_names.count("lora_magnitude_vector") == 1


def test_base_modules_is_named_modules_without_the_lora_layers_insides():
    model = HybridModel(t5_from_preset("tiny")[0], HybridConfig(mode="lora"))
    model.add_adapter("b", HybridConfig(mode="lora"))
    layers = lora_layers(model.base_model)
    expected = [
        (name, module)
        for name, module in model.base_model.named_modules()
        if not any(name.startswith(f"{layer}.") for layer in layers)
    ]
    assert list(base_modules(model.base_model)) == expected
    assert len(layers) == 2 * 2 + 2 * 4  # q and v: encoder self-attention, decoder self- and cross-attention
