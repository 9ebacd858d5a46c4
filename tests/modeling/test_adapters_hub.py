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
