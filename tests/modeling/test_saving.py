"""Saving several adapters into one folder: checked whole before writing, and a second save into the
same folder leaves exactly what it saved (no stale adapter subfolder), never touching user files."""

from __future__ import annotations

import json

import pytest
import torch

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.modeling.saving import INDEX_NAME
from peft_hybrid.modeling.serialization import WEIGHTS_NAME
from peft_hybrid.offline import t5_from_preset


def _model(*names: str) -> HybridModel:
    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(mode="lora", r=2), tokenizer=tok, adapter_name="a")
    for name in names:
        model.add_adapter(name, HybridConfig(mode="prompt", num_virtual_tokens=2))
    return model


def test_saving_all_again_after_delete_adapter_removes_the_deleted_adapters_subfolder(tmp_path):
    model = _model("b", "z")
    model.save_pretrained(tmp_path, adapter_names="all")
    assert (tmp_path / "z" / CONFIG_NAME).is_file()
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index == {"library": "peft_hybrid", "root": "a", "subfolders": ["b", "z"]}
    model.delete_adapter("z")
    model.save_pretrained(tmp_path, adapter_names="all")
    assert not (tmp_path / "z").exists()
    assert (tmp_path / "b" / CONFIG_NAME).is_file()
    assert json.loads((tmp_path / INDEX_NAME).read_text())["subfolders"] == ["b"]
    card = (tmp_path / "README.md").read_text()
    assert "| b | `b/` |" in card and "`z/`" not in card


def test_a_stale_subfolder_keeps_the_files_the_save_did_not_write(tmp_path):
    model = _model("z")
    model.save_pretrained(tmp_path, adapter_names="all")
    (tmp_path / "z" / "notes.txt").write_text("mine")
    model.delete_adapter("z")
    model.save_pretrained(tmp_path)  # one adapter now: the folder is that adapter alone
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["notes.txt"]
    assert not (tmp_path / INDEX_NAME).exists()


def test_a_subfolder_the_library_did_not_write_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "data.csv").write_text("x,y\n")
    model = _model("b")
    with pytest.raises(FileExistsError, match="holds files no earlier save"):
        model.save_pretrained(tmp_path, adapter_names="all")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert (tmp_path / "b" / "data.csv").read_text() == "x,y\n"


def test_a_subfolder_path_that_is_a_file_is_refused_before_the_root_is_written(tmp_path):
    (tmp_path / "b").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="it is a file"):
        _model("b").save_pretrained(tmp_path, adapter_names="all")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_300_character_adapter_name_is_refused_when_added():
    model = _model()
    with pytest.raises(ValueError, match="1 to 96 letters"):
        model.add_adapter("x" * 300, HybridConfig(mode="prompt", num_virtual_tokens=2))
    assert list(model.adapters) == ["a"]


def test_a_96_character_adapter_name_saves_and_loads_back(tmp_path):
    name = "n" * 96
    model = _model(name)
    model.save_pretrained(tmp_path, adapter_names="all")
    base, _ = t5_from_preset("tiny", seed=0)
    loaded = HybridModel.from_pretrained(tmp_path / name, base, adapter_name=name)
    assert torch.equal(
        loaded.adapter_tensors(name)["prompt_embeddings"], model.adapter_tensors(name)["prompt_embeddings"]
    )


@pytest.mark.parametrize("name", ["y\n", "y\r", "a b", "é", "", "a/b", "..", "__base__"])
def test_an_adapter_name_that_cannot_be_a_subfolder_is_refused(name):
    with pytest.raises(ValueError, match="adapter_name="):
        _model().add_adapter(name, HybridConfig(mode="prompt", num_virtual_tokens=2))


def test_a_damaged_adapters_index_is_named(tmp_path):
    model = _model("b")
    model.save_pretrained(tmp_path, adapter_names="all")
    (tmp_path / INDEX_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=r"hybrid_adapters.json is damaged"):
        model.save_pretrained(tmp_path, adapter_names="all")
    assert (tmp_path / "b" / WEIGHTS_NAME).is_file()


def test_a_users_own_index_file_is_never_taken_as_a_record_of_what_to_remove(tmp_path):
    model = _model("b")
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "README.md").write_text("my notes")
    (tmp_path / INDEX_NAME).write_text(json.dumps({"subfolders": ["z"]}))  # not written by the library
    model.save_pretrained(tmp_path, adapter_names="all")
    assert (tmp_path / "z" / "README.md").read_text() == "my notes"
