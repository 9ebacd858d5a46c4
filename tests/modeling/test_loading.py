"""The one base-model resolver: presets, folders and Hub bases load the same way everywhere, and an
adapter records (and is reloaded onto) the base it was trained on."""

import json
import subprocess
import sys
import warnings

import pytest
import torch

from helpers import HANG_S, run_child
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.modeling import loading
from peft_hybrid.modeling.loading import BaseRevisionWarning, BaseSource, base_source, load_base, record_base
from peft_hybrid.offline import t5_from_preset

TEXTS = ["Amy: see you at 5?", "Sam: I'll be 10 minutes late."]


def _perturb(model: HybridModel, seed: int = 1) -> HybridModel:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_tensors().values():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _logits(model, tokenizer) -> torch.Tensor:
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc, decoder_input_ids=torch.zeros((len(TEXTS), 1), dtype=torch.long)).logits


def test_an_adapter_trained_on_a_preset_reloads_without_a_base(tmp_path):
    base, tokenizer = load_base(preset="tiny")  # what --model_preset tiny does
    model = _perturb(HybridModel(base, HybridConfig(mode="hybrid", lora_dropout=0.0), tokenizer=tokenizer))
    assert (model.hybrid_config.base_model_name_or_path, model.hybrid_config.revision) == ("preset:tiny", None)
    model.save_pretrained(tmp_path / "adapter")

    loaded = HybridModel.from_pretrained(tmp_path / "adapter").eval()  # no base_model: rebuilt from "preset:tiny"
    assert torch.equal(_logits(loaded, tokenizer), _logits(model, tokenizer))


def test_a_folder_base_is_recorded_as_given_and_reloaded_from_it(tmp_path, monkeypatch):
    base, tokenizer = t5_from_preset("tiny", seed=3)
    base.save_pretrained(tmp_path / "my-base")
    tokenizer.save_pretrained(tmp_path / "my-base")
    monkeypatch.chdir(tmp_path)
    loaded_base, loaded_tokenizer = load_base("my-base")
    # transformers stores the path it was given; the config keeps what the user wrote, with no revision.
    assert base_source(loaded_base) == BaseSource("my-base", None)
    model = _perturb(HybridModel(loaded_base, HybridConfig(mode="lora", lora_dropout=0.0)))
    assert (model.hybrid_config.base_model_name_or_path, model.hybrid_config.revision) == ("my-base", None)
    model.save_pretrained("adapter")
    saved = json.loads((tmp_path / "adapter" / "hybrid_config.json").read_text())
    assert saved["base_model_name_or_path"] == "my-base" and str(tmp_path) not in json.dumps(saved)
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "the local base model `my-base` (not on the Hub)" in card

    reloaded = HybridModel.from_pretrained("adapter").eval()
    assert torch.equal(_logits(reloaded, loaded_tokenizer), _logits(model, loaded_tokenizer))


def test_a_base_of_another_commit_warns_and_a_matching_one_does_not():
    base, _ = t5_from_preset("tiny")
    config = HybridConfig(mode="lora", base_model_name_or_path="me/base", revision="a" * 40)
    loading._SOURCES[base] = BaseSource("me/base", "b" * 40)  # as load_base_model("me/base") records it
    with pytest.warns(BaseRevisionWarning, match=f"commit {'a' * 40}.*commit {'b' * 40}"):
        record_base(config, base)
    assert config.revision == "a" * 40  # the config keeps the commit it was trained on
    loading._SOURCES[base] = BaseSource("me/base", "a" * 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record_base(config, base)
        # A branch name (older adapters) cannot be compared with a commit: no warning either.
        record_base(HybridConfig(mode="lora", base_model_name_or_path="me/base", revision="main"), base)


def test_a_config_naming_this_base_without_a_revision_gets_its_commit():
    base, _ = t5_from_preset("tiny")
    loading._SOURCES[base] = BaseSource("me/base", "c" * 40)
    config = HybridConfig(mode="lora", base_model_name_or_path="me/base")
    record_base(config, base)
    assert config.revision == "c" * 40
    other = HybridConfig(mode="lora", base_model_name_or_path="someone/else")
    record_base(other, base)
    assert other.revision is None  # another base's name: nothing is claimed about its commit


HUB_CHILD = r"""
import json, sys, warnings
import torch
from huggingface_hub import HfApi
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.inference import generate_texts
from peft_hybrid.modeling.loading import BaseRevisionWarning, load_base, load_base_model

base_dir, base2_dir, base_id, adapter_id, out = sys.argv[1:6]
texts = json.loads(sys.stdin.read())
api = HfApi()
api.create_repo(base_id, private=False, exist_ok=True)
first = api.upload_folder(folder_path=base_dir, repo_id=base_id).oid

base, tokenizer = load_base(base_id)
model = HybridModel(base, HybridConfig(mode="lora", lora_dropout=0.0), tokenizer=tokenizer)
gen = torch.Generator().manual_seed(1)
with torch.no_grad():
    for p in model.adapter_tensors().values():
        p.add_(torch.randn(p.shape, generator=gen) * 0.2)
model.eval()
recorded = (model.hybrid_config.base_model_name_or_path, model.hybrid_config.revision)
expected = generate_texts(model, tokenizer, texts, max_new_tokens=8, progress=False)
model.push_to_hub(adapter_id, private=False)

second = api.upload_folder(folder_path=base2_dir, repo_id=base_id).oid  # the base id moves on
reloaded = HybridModel.from_pretrained(adapter_id).eval()
again = generate_texts(reloaded, tokenizer, texts, max_new_tokens=8, progress=False)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    HybridModel.from_pretrained(adapter_id, base_model=load_base_model(base_id))
warned = [str(w.message) for w in caught if issubclass(w.category, BaseRevisionWarning)]
json.dump(dict(first=first, second=second, recorded=recorded, expected=expected, again=again,
               reloaded_revision=reloaded.hybrid_config.revision, warned=warned), open(out, "w"))
"""


@pytest.mark.slow
@pytest.mark.timeout(3 * HANG_S)  # three children, each bounded by HANG_S: above the suite's --timeout on purpose
def test_a_hub_base_is_pinned_and_the_cli_predicts_offline_from_the_cache(hub_server, tmp_path):
    """Train on a Hub base, re-push the base, reload: the pinned commit comes back; then offline CLI."""
    for seed, name in ((5, "base"), (6, "base2")):
        base, tokenizer = t5_from_preset("tiny", seed=seed)
        base.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    base_id, adapter_id = "alice/pinned-tiny-base", "alice/pinned-tiny-adapter"
    env = hub_server.subprocess_env(token=hub_server.token("alice"), HF_HOME=str(tmp_path / "hf-home"))
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "child.json"
    args = [str(tmp_path / "base"), str(tmp_path / "base2"), base_id, adapter_id, str(out)]
    child, _ = run_child(HUB_CHILD, args, TEXTS, out, env, timeout=HANG_S)
    assert child["first"] != child["second"]
    assert child["recorded"] == [base_id, child["first"]]  # by id, with the commit it resolved to
    assert child["reloaded_revision"] == child["first"] and child["again"] == child["expected"]
    assert len(child["warned"]) == 1 and child["second"] in child["warned"][0]

    # Offline, from the cache the online run filled: the CLI finds the adapter repo and its pinned base.
    env.update(HF_HUB_OFFLINE="1")
    env.pop("HF_TOKEN")
    predict = subprocess.run(
        [sys.executable, "-m", "peft_hybrid.cli", "predict", "--adapter", adapter_id, "--max_new_tokens", "8"]
        + ["--batch_size", "16", "--max_source_length", "512", "--no_progress"],
        input="\n".join(TEXTS) + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert predict.stdout.splitlines() == child["expected"]

    # A repo never downloaded is a Hub failure (exit 1) with the offline advice.
    missing = subprocess.run(
        [sys.executable, "-m", "peft_hybrid.cli", "predict", "--adapter", "alice/never-downloaded"],
        input="hello\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert missing.returncode == 1 and "not in the local cache" in missing.stderr
