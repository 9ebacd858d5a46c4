import dataclasses
import json

import pytest

from peft_hybrid import HybridConfig
from peft_hybrid.config import ADAPTER_FIELDS, FORMAT_VERSION, InferenceSettings


def test_paper_defaults():
    c = HybridConfig()
    assert (c.mode, c.r, c.lora_alpha, c.target_modules, c.lora_dropout) == ("hybrid", 4, 4, ["q", "v"], 0.05)
    assert (c.num_virtual_tokens, c.prompt_init) == (30, "sample_vocab")


def test_json_round_trip_is_exact_and_sorted():
    c = HybridConfig(
        mode="lora", r=8, target_modules=["q", "k", "v"], base_model_name_or_path="google/flan-t5-base", revision="abc"
    )
    text = c.to_json_string()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["format_version"] == FORMAT_VERSION and data["library"] == "peft_hybrid"
    assert HybridConfig.from_dict(data) == c


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"mode": "adapter"}, "none, prompt, lora, hybrid, full"),
        ({"mode": "lora", "r": 0}, "positive integer"),
        ({"mode": "hybrid", "lora_dropout": 1.5}, "[0, 1)"),
        ({"mode": "prompt", "num_virtual_tokens": 0}, "positive integer"),
        ({"prompt_init": "zeros"}, "sample_vocab, text, random"),
        ({"prompt_init": "text"}, "prompt_init_text"),
        ({"mode": "lora", "target_modules": []}, "non-empty"),
        ({"mode": "lora", "lora_alpha": 0}, "lora_alpha"),
    ],
)
def test_bad_values_say_what_is_valid(kwargs, words):
    with pytest.raises(ValueError, match="HybridConfig") as err:
        HybridConfig(**kwargs)
    assert words in str(err.value)


def test_parts_not_used_by_a_mode_are_not_validated():
    # r=0 is meaningless for LoRA but harmless when the mode has no LoRA.
    assert HybridConfig(mode="prompt", r=0).uses_lora is False


def test_newer_format_and_unknown_fields_are_refused():
    data = HybridConfig().to_dict()
    with pytest.raises(ValueError, match="Upgrade"):
        HybridConfig.from_dict({**data, "format_version": FORMAT_VERSION + 1, "library_version": "9.0"})
    with pytest.raises(ValueError, match="unknown field"):
        HybridConfig.from_dict({**data, "rank": 4})


def test_adapter_settings_are_every_field_but_initialisation_and_provenance():
    names = [f.name for f in dataclasses.fields(HybridConfig)]
    assert set(names) - set(ADAPTER_FIELDS) == {
        "prompt_init_text",
        "seed",
        "base_model_name_or_path",
        "revision",
        "base_quantization",
        "base_model_shape",
        "task",
        "inference",
    }
    assert ADAPTER_FIELDS == (
        "mode",
        "r",
        "lora_alpha",
        "target_modules",
        "lora_dropout",
        "use_dora",
        "use_rslora",
        "rank_pattern",
        "alpha_pattern",
        "num_virtual_tokens",
        "prompt_init",
    )
    config = HybridConfig(mode="lora", r=8, base_model_name_or_path="google/flan-t5-base", task="sst2")
    settings = config.adapter_settings()
    assert settings == {name: getattr(config, name) for name in ADAPTER_FIELDS} and settings["r"] == 8
    settings["target_modules"].append("k")  # a copy: the config keeps its own list
    assert config.target_modules == ["q", "v"]


@pytest.mark.parametrize(
    "mode, trainable, tags, base",
    [
        ("none", False, False, False),
        ("prompt", True, False, False),
        ("lora", True, False, False),
        ("hybrid", True, False, False),
        ("full", True, True, True),
    ],
)
def test_the_modes_derived_facts(mode, trainable, tags, base):
    config = HybridConfig(mode=mode)
    assert (config.has_trainable_parameters, config.uses_task_tags, config.trains_base) == (trainable, tags, base)


def test_inference_settings_round_trip_as_a_nested_object():
    settings = InferenceSettings(
        task_prefix="review: ",
        use_task_tags=False,
        max_source_length=64,
        generation={"max_new_tokens": 3, "num_beams": 1},
    )
    config = HybridConfig(task="sst2", inference=settings)
    data = json.loads(config.to_json_string())
    assert data["inference"] == {
        "task_prefix": "review: ",
        "use_task_tags": False,
        "max_source_length": 64,
        "generation": {"max_new_tokens": 3, "num_beams": 1},
    }
    loaded = HybridConfig.from_dict(data)
    assert isinstance(loaded.inference, InferenceSettings) and loaded == config
    assert "inference" not in config.adapter_settings()


def test_format_1_configs_load_without_inference_settings():
    data = HybridConfig().to_dict()
    del data["inference"]
    data["format_version"] = 1
    assert HybridConfig.from_dict(data).inference is None


@pytest.mark.parametrize(
    "inference, words",
    [
        ({"task_prefix": "x", "max_len": 3}, "unknown field(s) ['max_len'] in 'inference'"),
        ({"max_source_length": 0}, "inference.max_source_length=0"),
        ({"max_source_length": True}, "inference.max_source_length=True"),
        ({"use_task_tags": "yes"}, "inference.use_task_tags='yes'"),
        ({"generation": {"stopping": [1, 2]}}, "plain JSON values"),
        ("review: ", "'inference' must be an object"),
    ],
)
def test_bad_inference_settings_are_refused_naming_the_key(inference, words):
    data = {**HybridConfig().to_dict(), "inference": inference}
    with pytest.raises(ValueError) as err:
        HybridConfig.from_dict(data, source="adapter/hybrid_config.json")
    assert words in str(err.value) and "adapter/hybrid_config.json" in str(err.value)


@pytest.mark.parametrize("version", [True, False, 0, -5, None, "2"])
def test_a_saved_format_version_that_is_not_a_positive_integer_is_refused_naming_the_file(version):
    data = HybridConfig().to_dict()
    data["format_version"] = version
    with pytest.raises(ValueError, match=rf"saved.json: format_version={version!r} is not an adapter format"):
        HybridConfig.from_dict(data, source="saved.json")


@pytest.mark.parametrize(
    "generation, words",
    [
        ({"max_new_token": 5}, "['max_new_token']=5: not a generate() argument"),
        ({"max_new_tokens": "5"}, "['max_new_tokens']='5': must be a positive integer"),
        ({"num_beams": 0}, "['num_beams']=0: must be a positive integer"),
    ],
)
def test_hand_edited_generation_settings_are_refused_at_load_naming_file_key_and_value(generation, words):
    data = HybridConfig(task="sst2").to_dict()
    data["inference"] = {"generation": generation}
    with pytest.raises(ValueError, match="saved.json: inference.generation") as err:
        HybridConfig.from_dict(data, source="saved.json")
    assert words in str(err.value)
