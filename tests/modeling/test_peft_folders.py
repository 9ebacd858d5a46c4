"""Vanilla PEFT LoRA folders: every LoraConfig field is honoured (PeftModel's logits) or refused by name."""

import copy
import dataclasses
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.modeling.peft_folders import HONOURED, NO_EFFECT
from peft_hybrid.modeling.serialization import AdapterLoadError
from peft_hybrid.offline import t5_from_preset

TEXTS = ["Amy: Hi Ben! Are you free tomorrow? Ben: Sure, after five.", "Sam: late."]
PLAIN = dict(r=4, lora_alpha=8, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")


@pytest.fixture(scope="module")
def tiny():
    base, tok = t5_from_preset("tiny", seed=0)
    return base.eval(), tok


def _saved(tmp_path, base, **settings):
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(**{**PLAIN, **settings}))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    peft_model.save_pretrained(tmp_path / "peft")
    return tmp_path / "peft"


HONOURED_CASES = {
    "use_rslora": dict(use_rslora=True),
    "alpha_pattern": dict(alpha_pattern={"v": 32}),
    "rank_pattern": dict(rank_pattern={"q": 2, "EncDecAttention.v": 6}),
    "rank_and_alpha_patterns_with_rslora": dict(use_rslora=True, rank_pattern={"v": 8}, alpha_pattern={"q": 2}),
    "use_dora": dict(use_dora=True),
    "regex_target_modules": dict(target_modules=r".*\.(q|v)"),
    "init_lora_weights_gaussian": dict(init_lora_weights="gaussian"),
    "lora_dropout": dict(lora_dropout=0.1),
}


@pytest.mark.parametrize("settings", list(HONOURED_CASES.values()), ids=list(HONOURED_CASES))
def test_an_honoured_lora_config_field_gives_peftmodels_logits(tmp_path, tiny, settings):
    base, tok = tiny
    folder = _saved(tmp_path, base, **settings)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    ours = HybridModel.from_peft_lora(copy.deepcopy(base), folder, HybridConfig(mode="lora")).eval()
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    labels = tok(["Amy meets Ben.", "Sam is late."], return_tensors="pt", padding=True).input_ids
    want = peft_model(**batch, labels=labels).logits
    assert (want - base(**batch, labels=labels).logits).abs().max() > 0.05
    torch.testing.assert_close(ours(**batch, labels=labels).logits, want, atol=1e-5, rtol=0)
    # Saved as a hybrid adapter and loaded back, it keeps computing the same.
    ours.save_pretrained(tmp_path / "ours")
    again = HybridModel.from_pretrained(tmp_path / "ours", copy.deepcopy(base)).eval()
    torch.testing.assert_close(again(**batch, labels=labels).logits, want, atol=1e-5, rtol=0)


def _non_default(field: dataclasses.Field):
    """A value other than the field's default, of a type the field takes."""
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, str):
        return default + "_other"
    if isinstance(default, dict):
        return {"x": 1}
    return ["encoder.block.0.layer.0.SelfAttention.q"]  # None: any set value


REFUSED = [
    f
    for f in dataclasses.fields(LoraConfig)
    if f.name not in HONOURED and f.name not in NO_EFFECT and f.name != "init_lora_weights"
]


@pytest.mark.parametrize("field", REFUSED, ids=[f.name for f in REFUSED])
def test_any_other_lora_config_field_set_is_refused_naming_it(tmp_path, tiny, field):
    base, _ = tiny
    folder = _saved(tmp_path, base)
    config_file = folder / "adapter_config.json"
    data = json.loads(config_file.read_text())
    data[field.name] = _non_default(field)
    config_file.write_text(json.dumps(data))
    with pytest.raises(AdapterLoadError, match=rf"does not support: {field.name}="):
        HybridModel.from_peft_lora(copy.deepcopy(base), folder, HybridConfig(mode="lora"))
    host = HybridModel(copy.deepcopy(base), HybridConfig(mode="prompt", num_virtual_tokens=2))
    with pytest.raises(AdapterLoadError, match=rf"does not support: {field.name}="):
        host.load_adapter(folder, "peft")
    assert list(host.adapters) == ["default"]


@pytest.mark.parametrize("value", ["pissa", "olora", "loftq"])
def test_an_initialisation_that_changes_the_base_is_refused(tmp_path, tiny, value):
    base, _ = tiny
    folder = _saved(tmp_path, base)
    data = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**data, "init_lora_weights": value}))
    with pytest.raises(AdapterLoadError, match=f"init_lora_weights='{value}' \\(it changes the base weights"):
        HybridModel.from_peft_lora(copy.deepcopy(base), folder, HybridConfig(mode="lora"))


def test_a_regex_target_modules_selecting_part_of_a_name_is_refused_in_words(tmp_path, tiny):
    base, _ = tiny
    folder = _saved(tmp_path, base, target_modules=r"encoder\..*\.q")
    with pytest.raises(AdapterLoadError) as caught:
        HybridModel.from_peft_lora(copy.deepcopy(base), folder, HybridConfig(mode="lora"))
    message = str(caught.value)
    expected = r"regular expression 'encoder\\..*\\.q', which selects 2 of the base's 6 Linear layers named ['q']"
    assert expected in message
    assert "['$'" not in message and "'('" not in message
