"""A repo of several task adapters on one base: pushed with push_to_hub(adapter_names=...), each
loaded back by name and subfolder through the real huggingface_hub client and the local Hub server."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from huggingface_hub import HfApi, ModelCard  # noqa: E402

from peft_hybrid import HybridConfig, HybridModel  # noqa: E402
from peft_hybrid.offline import t5_from_preset  # noqa: E402


def _three_tasks():
    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(task="samsum", num_virtual_tokens=4), tokenizer=tok, adapter_name="samsum")
    model.add_adapter("sst2", HybridConfig(mode="prompt", task="sst2", num_virtual_tokens=6))
    model.add_adapter("ner", HybridConfig(mode="lora", r=2))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.all_adapter_tensors():
            t.add_(torch.randn(t.shape, generator=gen) * 0.1)
    return model.eval(), tok


def test_multi_adapter_repo_round_trip(hub_online, tmp_path, monkeypatch):
    from huggingface_hub import constants

    server = hub_online
    monkeypatch.setattr(constants, "ENDPOINT", server.url)  # downloads go to the local server too
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    model, tok = _three_tasks()
    repo_id = "alice/three-tasks"
    model.push_to_hub(repo_id, token=server.token("alice"), adapter_names="all", endpoint=server.url)
    files = set(HfApi(endpoint=server.url, token=server.token("alice")).list_repo_files(repo_id))
    for prefix in ("", "sst2/", "ner/"):
        assert {f"{prefix}hybrid_config.json", f"{prefix}adapter_model.safetensors", f"{prefix}README.md"} <= files
    card = ModelCard.load(repo_id, token=server.token("alice"))
    assert "| sst2 | `sst2/` | prompt | sst2 |" in card.text and "| ner | `ner/` | lora | - |" in card.text

    base, _ = t5_from_preset("tiny", seed=0)
    cache = str(tmp_path / "cache")
    loaded = HybridModel.from_pretrained(
        repo_id, base, adapter_name="samsum", token=server.token("alice"), cache_dir=cache
    )
    for name in ("sst2", "ner"):
        loaded.load_adapter(repo_id, name, subfolder=name, token=server.token("alice"), cache_dir=cache)
    assert list(loaded.adapters) == ["samsum", "sst2", "ner"]
    for name in loaded.adapters:
        want, got = model.adapter_tensors(name), loaded.adapter_tensors(name)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    batch = tok(["Amy: lunch?", "great film", "Ben went to Paris"], return_tensors="pt", padding=True)
    names = ["samsum", "sst2", "ner"]
    settings = dict(adapter_names=names, max_new_tokens=6)
    assert torch.equal(loaded.eval().generate(**batch, **settings), model.generate(**batch, **settings))


def _use_local_hub(monkeypatch, server):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)


def test_a_rejected_token_after_a_newer_push_is_an_error_not_the_cached_commit(hub_online, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from peft_hybrid.hub.download import resolve_folder
    from peft_hybrid.hub.errors import HubAuthenticationError

    server = hub_online
    _use_local_hub(monkeypatch, server)
    model, _ = _three_tasks()
    repo_id, token, cache = "alice/private-stale", server.token("alice"), str(tmp_path / "cache")
    model.push_to_hub(repo_id, private=True, token=token, endpoint=server.url)
    old = resolve_folder(repo_id, token=token, cache_dir=cache)
    with torch.no_grad():
        model.adapter_tensors()["prompt_embeddings"].add_(1.0)
    model.push_to_hub(repo_id, token=token, endpoint=server.url)
    with pytest.raises(HubAuthenticationError, match="alice/private-stale"):
        resolve_folder(repo_id, token="hf_rejected0000000000000000", cache_dir=cache)
    assert resolve_folder(repo_id, token=token, cache_dir=cache) != old  # the newer commit, with the good token
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: the cache answers, as documented
    assert resolve_folder(repo_id, token="hf_rejected0000000000000000", cache_dir=cache).is_dir()


def test_saving_all_again_after_delete_adapter_removes_its_subfolder_from_the_repo(hub_online, monkeypatch):
    server = hub_online
    _use_local_hub(monkeypatch, server)
    model, _ = _three_tasks()
    repo_id, token = "alice/three-then-two", server.token("alice")
    api = HfApi(endpoint=server.url, token=token)
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"mine", path_in_repo="ner/notes.txt", repo_id=repo_id)
    model.push_to_hub(repo_id, token=token, adapter_names="all", endpoint=server.url)
    model.delete_adapter("ner")
    model.push_to_hub(repo_id, token=token, adapter_names="all", endpoint=server.url)
    files = set(api.list_repo_files(repo_id))
    assert "sst2/hybrid_config.json" in files and "hybrid_adapters.json" in files
    assert {f for f in files if f.startswith("ner/")} == {"ner/notes.txt"}  # only what the push wrote went
    card = ModelCard.load(repo_id, token=token)
    assert "`ner/`" not in card.text and "| sst2 | `sst2/` |" in card.text


def test_a_subfolder_adapter_of_a_hub_repo_predicts_with_the_colon_form_and_with_subfolder(
    hub_online, tmp_path, monkeypatch, capsys
):
    from peft_hybrid.cli import main as cli

    server = hub_online
    _use_local_hub(monkeypatch, server)
    model, tok = _three_tasks()
    repo_id, token = "alice/three-for-cli", server.token("alice")
    model.push_to_hub(repo_id, token=token, adapter_names="all", endpoint=server.url)
    monkeypatch.setenv("HF_TOKEN", token)
    (tmp_path / "in.txt").write_text("great film\n")
    outputs = []
    for flags in (["--adapter", f"{repo_id}:ner"], ["--adapter", repo_id, "--subfolder", "ner"]):
        assert (
            cli(
                ["predict", *flags, "--model_preset", "tiny", "--input", str(tmp_path / "in.txt")]
                + ["--max_new_tokens", "4", "--no_progress", "--device", "cpu"]
            )
            == 0
        )
        outputs.append(capsys.readouterr().out)
    batch = tok(["great film"], return_tensors="pt")
    want = tok.decode(model.generate(**batch, adapter_names=["ner"], max_new_tokens=4)[0], skip_special_tokens=True)
    assert outputs == [want + "\n", want + "\n"]


def test_load_adapter_takes_the_colon_form_of_a_hub_subfolder_as_serve_adapter_does(hub_online, tmp_path, monkeypatch):
    server = hub_online
    _use_local_hub(monkeypatch, server)
    model, _ = _three_tasks()
    repo_id, token = "alice/three-for-serve", server.token("alice")
    model.push_to_hub(repo_id, token=token, adapter_names="all", endpoint=server.url)
    base, tok = t5_from_preset("tiny", seed=0)
    served = HybridModel(base, HybridConfig(mode="none"), tokenizer=tok, adapter_name="idle")
    monkeypatch.setenv("HF_TOKEN", token)
    served.load_adapter(f"{repo_id}:sst2", "sst2", cache_dir=str(tmp_path / "cache"))  # serve: sst2=repo:sst2
    want, got = model.adapter_tensors("sst2"), served.adapter_tensors("sst2")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
