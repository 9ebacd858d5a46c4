"""Named adapters on one base: add, load, switch, delete, save; errors for bad names and keywords."""

import copy
import json
import struct

import pytest
import torch
from safetensors.torch import load_file

from helpers import SCALED_LORA, tiny_model
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.inference import merged_lora
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.serialization import AdapterLoadError


def _same_file(a, b):
    """Byte-for-byte, except that safetensors writes its metadata map in hash order (so two saves of
    one model differ there, and in the weights hash the config records): the parsed header must be
    equal, and every byte after it; configs equal but for that hash."""
    if a.suffix == ".json":
        configs = [json.loads(p.read_text()) for p in (a, b)]
        for config in configs:
            config.pop("weights_sha256")
        return configs[0] == configs[1]
    if a.suffix != ".safetensors":
        return a.read_bytes() == b.read_bytes()
    blobs = [p.read_bytes() for p in (a, b)]
    sizes = [struct.unpack("<Q", blob[:8])[0] for blob in blobs]
    headers = [json.loads(blob[8 : 8 + n]) for blob, n in zip(blobs, sizes)]
    return headers[0] == headers[1] and blobs[0][8 + sizes[0] :] == blobs[1][8 + sizes[1] :]


def _base_state(model):
    return {k: v.clone() for k, v in model.base_model.state_dict().items() if "lora_" not in k}


def _assert_base_unchanged(model, before):
    after = {k: v for k, v in model.base_model.state_dict().items() if "lora_" not in k}
    after = {k.replace(".base_layer", ""): v for k, v in after.items()}
    before = {k.replace(".base_layer", ""): v for k, v in before.items()}
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.fixture
def saved(tmp_path):
    """Three single-adapter folders of different modes, saved from models on the same tiny base."""
    folders = {}
    kinds = (("a", "hybrid", {}), ("b", "lora", {"r": 2}), ("c", "prompt", {"num_virtual_tokens": 7}))
    for name, mode, extra in kinds:
        model, _ = tiny_model(mode, seed=0, **extra)
        folders[name] = model.save_pretrained(tmp_path / name)
    return folders


def test_loading_more_adapters_allocates_only_their_tensors(saved):
    base, tok = t5_from_preset("tiny", seed=0)
    base_params = {n: p.data_ptr() for n, p in base.named_parameters()}
    model = HybridModel.from_pretrained(saved["a"], base, adapter_name="a")
    count = model.num_parameters()
    for name in ("b", "c"):
        expected = sum(t.numel() for t in load_file(str(saved[name] / "adapter_model.safetensors")).values())
        model.load_adapter(saved[name], name)
        assert model.num_parameters() == count + expected
        count += expected
    assert list(model.adapters) == ["a", "b", "c"] and model.active_adapter == "a"
    now = {n.replace(".base_layer", ""): p.data_ptr() for n, p in model.base_model.named_parameters()}
    assert {n: now[n] for n in base_params} == base_params  # the very same base tensors, no copy
    for name in ("a", "b", "c"):  # each loaded exactly
        saved_tensors = load_file(str(saved[name] / "adapter_model.safetensors"))
        assert all(torch.equal(saved_tensors[k], v) for k, v in model.adapter_tensors(name).items())


def test_only_the_active_adapter_trains_and_switching_and_deleting_keep_the_base(saved):
    model = HybridModel.from_pretrained(saved["a"], t5_from_preset("tiny", seed=0)[0], adapter_name="a")
    before = _base_state(model)
    model.load_adapter(saved["b"], "b")
    model.load_adapter(saved["c"], "c")
    model.set_adapter("b")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(t) for t in model.adapter_tensors("b").values()}
    assert model.hybrid_config.mode == "lora" and model.prompt is None
    model.set_adapter("c")
    assert model.lora is None and model.prompt.num_virtual_tokens == 7
    model.delete_adapter("b")
    model.delete_adapter("a")
    assert list(model.adapters) == ["c"]
    assert not any("lora_" in n for n, _ in model.named_parameters())  # LoRA layers gone with their adapters
    assert type(model.base_model.encoder.block[0].layer[0].SelfAttention.q) is torch.nn.Linear
    bare = sum(p.numel() for p in t5_from_preset("tiny")[0].parameters())
    assert model.num_parameters() == bare + 7 * 64  # the base and adapter c's 7 x 64 prompt, nothing else
    _assert_base_unchanged(model, before)
    with pytest.raises(ValueError, match="active adapter"):
        model.delete_adapter("c")


def test_whatever_is_added_or_loaded_only_the_active_adapter_trains(saved):
    model = HybridModel.from_pretrained(saved["a"], t5_from_preset("tiny", seed=0)[0], adapter_name="a")
    for name, source in (("b", saved["b"]), ("c", saved["c"]), ("d", None), ("e", None)):
        if source is None:
            model.add_adapter(name, HybridConfig(mode="hybrid", use_dora=name == "e"))
        else:
            model.load_adapter(source, name)
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable == {id(t) for t in model.adapter_tensors("a").values()}, name
    model.set_adapter("e")
    model.add_adapter("f", HybridConfig(mode="lora"))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(t) for t in model.adapter_tensors("e").values()}


def test_deleting_frees_exactly_the_adapters_tensors(saved):
    model = HybridModel.from_pretrained(saved["a"], t5_from_preset("tiny", seed=0)[0], adapter_name="a")
    alone = model.num_parameters()
    keys = set(model.state_dict())
    model.load_adapter(saved["b"], "b")
    model.delete_adapter("b")
    assert model.num_parameters() == alone
    assert set(model.state_dict()) == keys


def test_active_adapter_saves_in_todays_format_byte_for_byte(saved, tmp_path):
    model = HybridModel.from_pretrained(saved["a"], t5_from_preset("tiny", seed=0)[0])
    model.load_adapter(saved["b"], "b")
    model.load_adapter(saved["c"], "c")
    out = model.save_pretrained(tmp_path / "again")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in saved["a"].iterdir())
    for name in ("adapter_model.safetensors", "hybrid_config.json"):
        assert _same_file(out / name, saved["a"] / name)


def test_saving_several_uses_peft_layout_and_each_loads_alone(saved, tmp_path):
    model = HybridModel.from_pretrained(saved["a"], t5_from_preset("tiny", seed=0)[0], adapter_name="a")
    model.load_adapter(saved["b"], "b")
    model.load_adapter(saved["c"], "c")
    out = model.save_pretrained(tmp_path / "all", adapter_names="all")
    assert _same_file(out / "adapter_model.safetensors", saved["a"] / "adapter_model.safetensors")
    for name in ("b", "c"):
        for file in ("hybrid_config.json", "adapter_model.safetensors"):
            assert _same_file(out / name / file, saved[name] / file)
        alone = HybridModel.from_pretrained(out, t5_from_preset("tiny", seed=0)[0], subfolder=name)
        assert all(torch.equal(v, model.adapter_tensors(name)[k]) for k, v in alone.adapter_tensors().items())
    card = (out / "README.md").read_text()
    assert "| b | `b/` | lora |" in card and "| c | `c/` | prompt |" in card
    fresh = HybridModel.from_pretrained(out, t5_from_preset("tiny", seed=0)[0], adapter_name="a")
    fresh.load_adapter(out, "c", subfolder="c")
    assert sorted(fresh.adapters) == ["a", "c"]
    with pytest.raises(AdapterLoadError, match="no subfolder 'zz'.*\\['b', 'c'\\]"):
        fresh.load_adapter(out, "zz", subfolder="zz")
    model.save_pretrained(tmp_path / "two", adapter_names=["c", "a"])
    assert HybridModel.from_pretrained(tmp_path / "two", t5_from_preset("tiny")[0]).hybrid_config.mode == "prompt"
    with pytest.raises(ValueError, match="unknown adapter"):
        model.save_pretrained(tmp_path / "bad", adapter_names=["a", "nope"])


def test_bad_names_lengths_and_stray_keywords_raise():
    model, tok = tiny_model("hybrid")
    model.add_adapter("other", HybridConfig(mode="lora"))
    batch = tok(["one", "two"], return_tensors="pt", padding=True)
    loaded = r"unknown adapter\(s\) \['nope'\]; loaded adapters are \['default', 'other'\]"
    with pytest.raises(ValueError, match=loaded):
        model.generate(**batch, adapter_names=["nope", "other"], max_new_tokens=2)
    with pytest.raises(ValueError, match="has 3 names but the batch has 2 rows"):
        model(**batch, labels=batch["input_ids"], adapter_names=["other"] * 3)
    with pytest.raises(TypeError, match="adapter_name_list"):
        model.generate(**batch, adapter_name_list=["other", "other"], max_new_tokens=2)
    with pytest.raises(TypeError, match="adapters"):
        model(**batch, labels=batch["input_ids"], adapters=["other", "other"])
    with pytest.raises(ValueError, match=r"train mode and \['other'\] use LoRA dropout; call model.eval"):
        model.train()(**batch, labels=batch["input_ids"], adapter_names=["other", "default"])
    for bad in ("__base__", "a.b", "", "default"):
        with pytest.raises(ValueError, match="adapter_name|already loaded"):
            model.add_adapter(bad, HybridConfig())
    with pytest.raises(ValueError, match="No adapter named 'x'"):
        model.set_adapter("x")


def test_generate_still_takes_transformers_generation_arguments():
    from transformers import GenerationConfig

    model, tok = tiny_model("hybrid")
    batch = tok(["Amy: see you at 5?"], return_tensors="pt")
    a = model.generate(**batch, generation_config=GenerationConfig(max_new_tokens=4, num_beams=2))
    b = model.generate(**batch, max_new_tokens=4, num_beams=2, length_penalty=1.0, output_scores=False)
    assert torch.equal(a, b)
    torch.manual_seed(0)
    sampled = model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=5, use_cache=True)
    assert sampled.shape[0] == 1


def test_full_mode_holds_one_adapter_only():
    base, _ = t5_from_preset("tiny")
    full = HybridModel(base, HybridConfig(mode="full"))
    with pytest.raises(ValueError, match="mode 'full'"):
        full.add_adapter("x", HybridConfig(mode="lora"))
    model, _ = tiny_model("lora")
    with pytest.raises(ValueError, match="mode 'full'"):
        model.add_adapter("x", HybridConfig(mode="full"))


def test_adapter_for_another_base_is_refused_and_the_model_is_unchanged(tmp_path):
    other = HybridModel(t5_from_preset("flan-t5-small")[0], HybridConfig(mode="lora"))
    folder = other.save_pretrained(tmp_path / "other")
    model, _ = tiny_model("hybrid")
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(AdapterLoadError, match="shape"):
        model.load_adapter(folder, "other")
    assert [n for n, _ in model.named_parameters()] == names and list(model.adapters) == ["default"]


def test_merged_lora_merges_only_the_active_adapter():
    model, tok = tiny_model("lora", **SCALED_LORA)
    plain = copy.deepcopy(model)
    model.add_adapter("b", HybridConfig(mode="lora", r=2, lora_dropout=0.0))
    with torch.no_grad():
        for t in model.adapter_tensors("b").values():
            t.add_(0.5)
    batch = tok(["Tom: late again"], return_tensors="pt")
    with merged_lora(model):
        fast = model.generate(**batch, max_new_tokens=6)
        with pytest.raises(ValueError, match="merged"):
            model.generate(**batch, adapter_names=["b"], max_new_tokens=6)
    assert torch.equal(fast, plain.generate(**batch, max_new_tokens=6))
    with pytest.raises(ValueError, match=r"\['b'\] would run on a changed base"):
        model.merge_and_unload()


def test_merge_and_unload_refuses_while_any_other_adapter_is_loaded_even_prompt_only():
    """Another adapter, with or without LoRA, would run on a base holding the merged one's LoRA."""
    model, tok = tiny_model("lora")
    model.add_adapter("p", HybridConfig(mode="prompt", num_virtual_tokens=3))
    batch = tok(["Tom: late again"], return_tensors="pt")
    before = model.generate(**batch, adapter_names=["p"], max_new_tokens=6)
    with pytest.raises(ValueError, match=r"folds adapter 'default' .* so \['p'\] would run on a changed base"):
        model.merge_and_unload()
    assert model.lora is not None and not model.merged  # refused before anything was merged
    assert torch.equal(model.generate(**batch, adapter_names=["p"], max_new_tokens=6), before)
    model.delete_adapter("p")
    model.merge_and_unload()
    with pytest.raises(ValueError, match="was merged into the base weights"):
        model.add_adapter("q", HybridConfig(mode="prompt", num_virtual_tokens=3))


def test_a_vanilla_peft_lora_adapter_loads_as_a_named_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    base, tok = t5_from_preset("tiny", seed=3)
    reference = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q", "v"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    reference.save_pretrained(tmp_path / "peft")
    model = HybridModel(base, HybridConfig(mode="prompt", num_virtual_tokens=4), tokenizer=tok)
    model.load_adapter(tmp_path / "peft", "peft")
    assert model.adapters["peft"].mode == "lora" and model.adapters["peft"].r == 2
    batch = tok(["Amy: see you at 5?"], return_tensors="pt")
    labels = tok(["ok"], return_tensors="pt").input_ids
    want = reference.eval()(**batch, labels=labels).logits
    got = model.eval()(**batch, labels=labels, adapter_names=["peft"]).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_an_adapter_added_to_an_eval_model_runs_without_dropout():
    model, tok = tiny_model("lora")  # eval mode
    model.add_adapter("late", HybridConfig(mode="lora", lora_dropout=0.5))
    with torch.no_grad():
        for t in model.adapter_tensors("late").values():
            t.normal_(0, 0.1)
    batch = tok(["Amy: see you at 5?"], return_tensors="pt")
    labels = tok(["ok"], return_tensors="pt").input_ids
    first, second = (model(**batch, labels=labels, adapter_names=["late"]).logits for _ in range(2))
    assert torch.equal(first, second)
