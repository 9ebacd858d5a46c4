import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5ForConditionalGeneration

from helpers import tiny_model
from peft_hybrid import AdapterLoadError, HubError, HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset


@pytest.fixture
def saved(tmp_path):
    model, _ = tiny_model("hybrid")
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def _fresh_base():
    base, _ = t5_from_preset("tiny")
    return base, {k: v.clone() for k, v in base.state_dict().items()}


def _assert_untouched(base, before):
    assert set(base.state_dict()) == set(before), "LoRA layers were injected into the base passed in"
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


def _rewrite(path, change):
    tensors = load_file(path / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, path / "adapter_model.safetensors")
    # Keep the recorded hash in step so that the shape/key checks are what is exercised.
    import hashlib

    config = json.loads((path / "hybrid_config.json").read_text())
    config["weights_sha256"] = hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()
    (path / "hybrid_config.json").write_text(json.dumps(config))


CORRUPTIONS = {
    "missing key": (lambda t: t.pop("prompt_embeddings"), "missing keys ['prompt_embeddings']"),
    "extra key": (lambda t: t.__setitem__("extra.weight", torch.zeros(2)), "unexpected keys ['extra.weight']"),
    "wrong shape": (
        lambda t: t.__setitem__("prompt_embeddings", torch.zeros(30, 32)),
        "(30, 32) in the adapter but the base model needs (30, 64)",
    ),
    "wrong dtype": (
        lambda t: t.__setitem__("prompt_embeddings", torch.zeros(30, 64, dtype=torch.int32)),
        "must be floating point",
    ),
    # Non-finite values (with a valid hash) would load and generate blank lines.
    "NaN values": (
        lambda t: t["prompt_embeddings"].view(-1)[:3].fill_(float("nan")),
        "non-finite values in 1 tensor(s): prompt_embeddings (3 NaN, 0 infinite)",
    ),
    "infinite values": (
        lambda t: next(v for k, v in sorted(t.items()) if "lora_B" in k).view(-1)[:1].fill_(float("-inf")),
        "(0 NaN, 1 infinite)",
    ),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_bad_tensors_are_refused_and_the_base_is_untouched(saved, case):
    change, words = CORRUPTIONS[case]
    _rewrite(saved, change)
    base, before = _fresh_base()
    with pytest.raises(AdapterLoadError) as err:
        HybridModel.from_pretrained(saved, base_model=base)
    assert words in str(err.value) and "adapter_model.safetensors" in str(err.value)
    _assert_untouched(base, before)


def test_truncated_weights_are_refused(saved):
    weights = saved / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    base, before = _fresh_base()
    with pytest.raises(AdapterLoadError, match="interrupted or the file was changed"):
        HybridModel.from_pretrained(saved, base_model=base)
    _assert_untouched(base, before)


def test_truncated_weights_without_a_hash_say_unreadable(saved):
    config = json.loads((saved / "hybrid_config.json").read_text())
    del config["weights_sha256"]
    (saved / "hybrid_config.json").write_text(json.dumps(config))
    weights = saved / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterLoadError, match="not a readable safetensors file"):
        HybridModel.from_pretrained(saved, base_model=_fresh_base()[0])


def test_missing_files(saved):
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors is missing"):
        HybridModel.from_pretrained(saved, base_model=_fresh_base()[0])
    (saved / "hybrid_config.json").unlink()
    with pytest.raises(AdapterLoadError, match="hybrid_config.json not found"):
        HybridModel.from_pretrained(saved, base_model=_fresh_base()[0])


def test_adapter_for_another_base_names_both_shapes(saved):
    other = T5ForConditionalGeneration(
        T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    )
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(AdapterLoadError) as err:
        HybridModel.from_pretrained(saved, base_model=other)
    assert "'d_model': 64" in str(err.value) and "'d_model': 32" in str(err.value)
    _assert_untouched(other, before)


def test_config_from_a_future_version(saved):
    config = json.loads((saved / "hybrid_config.json").read_text())
    config["format_version"] = 99
    (saved / "hybrid_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="pip install -U peft-hybrid"):
        HybridModel.from_pretrained(saved, base_model=_fresh_base()[0])


def test_config_that_is_not_json(saved):
    (saved / "hybrid_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        HybridModel.from_pretrained(saved, base_model=_fresh_base()[0])


def test_save_into_a_file_path_or_unknown_repo(tmp_path):
    model, _ = tiny_model("lora")
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="it is a file"):
        model.save_pretrained(target)
    with pytest.raises(HubError, match="not in the Hub cache"):  # offline here: a Hub failure, not a bad adapter
        HybridModel.from_pretrained("nobody/no-such-adapter", base_model=_fresh_base()[0])


def test_resave_over_an_old_adapter_leaves_no_temporary_files(saved):
    model, _ = tiny_model("hybrid", seed=5)
    model.save_pretrained(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "adapter_model.safetensors", "hybrid_config.json"]
    loaded = HybridModel.from_pretrained(saved, base_model=t5_from_preset("tiny", seed=5)[0])
    assert all(torch.equal(loaded.adapter_tensors()[k], v) for k, v in model.adapter_tensors().items())


def test_config_records_versions_and_base(saved):
    config = json.loads((saved / "hybrid_config.json").read_text())
    assert config["library"] == "peft_hybrid" and config["format_version"] == 2
    assert config["base_model_name_or_path"] == "preset:tiny"
    assert config["base_model_shape"]["d_model"] == 64
    assert HybridConfig.load(saved).mode == "hybrid"


def _set_config(path, **changes):
    config = json.loads((path / "hybrid_config.json").read_text())
    config.update(changes)
    (path / "hybrid_config.json").write_text(json.dumps(config))


FILE_DAMAGE = {
    "future format": (lambda p: _set_config(p, format_version=99), "pip install -U peft-hybrid"),
    "config not JSON": (lambda p: (p / "hybrid_config.json").write_text("{not json"), "not valid JSON"),
    "config missing": (lambda p: (p / "hybrid_config.json").unlink(), "hybrid_config.json not found"),
    "weights missing": (lambda p: (p / "adapter_model.safetensors").unlink(), "adapter_model.safetensors is missing"),
    "weights of another save": (lambda p: _set_config(p, weights_sha256="0" * 64), "does not match the hash"),
    "unknown config field": (lambda p: _set_config(p, lora_rank=8), "unknown field(s) ['lora_rank']"),
}


@pytest.mark.parametrize("case", FILE_DAMAGE)
def test_every_refused_folder_leaves_the_base_passed_in_untouched(saved, case):
    damage, words = FILE_DAMAGE[case]
    damage(saved)
    base, before = _fresh_base()
    with pytest.raises(ValueError, match=re.escape(words)):
        HybridModel.from_pretrained(saved, base_model=base)
    _assert_untouched(base, before)


def test_a_refused_load_into_a_live_model_changes_no_adapter_tensor(saved):
    model, _ = tiny_model("hybrid", seed=3)
    before = {k: v.detach().clone() for k, v in model.adapter_tensors().items()}
    tensors = load_file(saved / "adapter_model.safetensors")  # all good but one: nothing may be copied
    tensors["prompt_embeddings"] = torch.zeros(29, 64)
    with pytest.raises(AdapterLoadError, match=r"\(29, 64\) in the adapter"):
        model.load_adapter_tensors(tensors, source="bad")
    assert all(torch.equal(v, before[k]) for k, v in model.adapter_tensors().items())


def test_non_finite_tensors_load_when_asked_to_for_debugging(saved):
    _rewrite(saved, lambda t: t["prompt_embeddings"].view(-1)[:3].fill_(float("nan")))
    model = HybridModel.from_pretrained(saved, base_model=_fresh_base()[0], allow_nonfinite=True)
    assert int(model.adapter_tensors()["prompt_embeddings"].isnan().sum()) == 3


def test_a_config_with_a_byte_order_mark_loads(saved):
    path = saved / "hybrid_config.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as some Windows editors save it
    model = HybridModel.from_pretrained(saved, base_model=_fresh_base()[0])
    assert model.hybrid_config.mode == "hybrid" and HybridConfig.load(saved).mode == "hybrid"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_saved_files_get_the_permissions_the_umask_gives(tmp_path, umask, mode):
    model, _ = tiny_model("hybrid")
    old = os.umask(umask)
    try:
        folder = model.save_pretrained(tmp_path / "adapter")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == dict.fromkeys(["README.md", "adapter_model.safetensors", "hybrid_config.json"], mode)


def _loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return tmp_path / "a"


def _file(tmp_path):
    (tmp_path / "adapter.safetensors").write_bytes(b"not a folder")
    return tmp_path / "adapter.safetensors"


def _dangling(tmp_path):
    (tmp_path / "adapter").symlink_to(tmp_path / "gone")
    return tmp_path / "adapter"


PATH_PROBLEMS = {
    "symlink loop": (_loop, "is a symbolic link loop"),
    "a file": (_file, "is a file, not an adapter folder"),
    "a link to nothing": (_dangling, "is a symbolic link to"),
}


@pytest.mark.parametrize("case", PATH_PROBLEMS)
@pytest.mark.parametrize("relative", [False, True])
def test_an_adapter_path_that_is_no_folder_says_what_it_is(tmp_path, monkeypatch, case, relative):
    make, words = PATH_PROBLEMS[case]
    path = make(tmp_path)
    if relative:  # a bare name would otherwise be taken for a Hub repo id
        monkeypatch.chdir(tmp_path)
        path = Path(path.name)
    with pytest.raises(AdapterLoadError) as err:
        HybridModel.from_pretrained(path, base_model=_fresh_base()[0])
    assert words in str(err.value) and str(path) in str(err.value)
