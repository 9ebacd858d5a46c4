"""The adapter-part interface: a config names its parts once; shapes, tensors, cards and the checklist agree."""

import re
from pathlib import Path

import pytest

import peft_hybrid.modeling.parts as parts_module
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.hub.card import CardData, render_card
from peft_hybrid.modeling.parts import PART_KINDS, AdapterPart, expected_shapes, method_summary
from peft_hybrid.offline import t5_from_preset

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = {
    "none": HybridConfig(mode="none"),
    "prompt": HybridConfig(mode="prompt", num_virtual_tokens=3),
    "lora": HybridConfig(mode="lora", r=2),
    "hybrid": HybridConfig(mode="hybrid", r=2, num_virtual_tokens=3),
    "lora+dora": HybridConfig(mode="lora", r=2, use_dora=True),
    "hybrid+dora": HybridConfig(mode="hybrid", r=2, num_virtual_tokens=3, use_dora=True),
}
KINDS = {
    "none": (),
    "prompt": ("prompt",),
    "lora": ("lora",),
    "hybrid": ("lora", "prompt"),
    "lora+dora": ("dora",),
    "hybrid+dora": ("dora", "prompt"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_config_names_its_parts_once_and_they_hold_exactly_the_expected_tensors(name):
    config = CONFIGS[name]
    assert config.part_kinds == KINDS[name]
    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, config, tokenizer=tok)
    adapter = model._adapters[model.active_adapter]
    assert [p.kind for p in adapter.parts] == list(KINDS[name])
    assert all(isinstance(p, AdapterPart) for p in adapter.parts)
    shapes = {k: tuple(v.shape) for k, v in model.adapter_tensors().items()}
    assert shapes == expected_shapes(base, config)
    assert model.num_parameters(trainable_only=True) == sum(v.numel() for v in model.adapter_tensors().values())


def test_every_registered_kind_is_named_by_some_config():
    assert set(PART_KINDS) == {kind for kinds in KINDS.values() for kind in kinds}


def test_the_card_method_line_comes_from_the_parts():
    assert method_summary(CONFIGS["hybrid"]) == (
        "LoRA on the attention projections plus a soft prompt prepended to the encoder input, on a frozen base."
    )
    assert method_summary(HybridConfig(mode="lora", target_modules=["wi", "wo"])) == (
        "LoRA on the `wi`, `wo` layers, on a frozen base."
    )
    assert method_summary(HybridConfig(mode="full")) == "full fine-tuning of every base weight."
    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, CONFIGS["hybrid+dora"], tokenizer=tok)
    card = render_card(CardData.from_model(model))
    assert (
        "Method: DoRA (LoRA with a trained magnitude per output channel) on the attention projections plus a soft "
        "prompt prepended to the encoder input, on a frozen base." in card
    )
    assert "| use_dora | True |" in card


def test_a_card_for_an_unknown_mode_says_what_is_valid_instead_of_a_key_error():
    with pytest.raises(ValueError, match=r"HybridConfig.mode='qlora' is not valid; choose one of"):
        render_card(CardData(mode="qlora"))


def test_the_checklist_names_files_that_exist():
    doc = parts_module.__doc__
    paths = re.findall(r"``((?:src|tests)/[\w/.<>]+)``", doc)
    assert len(paths) >= 7
    for path in paths:
        if "<kind>" in path:
            path = path.replace("<kind>", "dora")
        assert (ROOT / path).exists(), path
