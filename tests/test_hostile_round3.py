"""Hostile cases, round 3: adapter lifecycle, PEFT interop, mixed batches, hand-edited saved settings and
command-line edges. Each is named for what a hostile user does; each either held already or was fixed."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_model
from peft_hybrid import AdapterLoadError, HybridConfig, HybridModel
from peft_hybrid.cli import main as cli
from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.offline import t5_from_preset


def _saved(**fields) -> dict:
    data = HybridConfig(mode="hybrid", task="sst2").to_dict()
    data.update(fields)
    return data


def _inference(**generation) -> dict:
    return _saved(inference={"generation": generation})


# --- saved settings: hand-edited hybrid_config.json fields ----------------------------------
@pytest.mark.parametrize(
    "fields, words",
    [
        ({"r": "4"}, "r='4' must be an integer"),
        ({"lora_alpha": "4"}, "lora_alpha='4' must be a number"),
        ({"lora_dropout": "0.1"}, "lora_dropout='0.1' must be a number"),
        ({"lora_alpha": True}, "lora_alpha=True must be a number"),
        ({"num_virtual_tokens": True}, "num_virtual_tokens=True must be an integer"),
        ({"num_virtual_tokens": 2.0}, "num_virtual_tokens=2.0 must be an integer"),
        ({"seed": "x"}, "seed='x' must be an integer"),
        ({"task": 5}, "task=5 must be a string or null"),
        ({"revision": 123}, "revision=123 must be a string or null"),
        ({"base_model_name_or_path": ["t5"]}, "base_model_name_or_path=['t5'] must be a string"),
        ({"base_model_shape": "big"}, "base_model_shape='big' must be an object of integer sizes"),
        ({"base_model_shape": {"d_model": "32"}}, "base_model_shape="),
        ({"prompt_init_text": 7}, "prompt_init_text=7 must be a string"),
        ({"format_version": "2"}, "format_version='2' is not an adapter format"),
        ({"format_version": 2.5}, "format_version=2.5 is not an adapter format"),
        ({"mode": "LoRA"}, "mode='LoRA' is not valid"),
        ({"target_modules": []}, "target_modules must be a non-empty list"),
        ({"library": "peft"}, "is not a peft_hybrid adapter config"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_a_hand_edited_field_of_the_wrong_type_is_refused_naming_it(fields, words):
    with pytest.raises(ValueError, match="saved.json") as err:
        HybridConfig.from_dict(_saved(**fields), source="saved.json")
    assert words in str(err.value) or words in str(err.value).replace("HybridConfig.", "")


@pytest.mark.parametrize(
    "generation, words",
    [
        ({"num_return_sequences": 2}, "one sequence per input"),
        ({"return_dict_in_generate": True}, "one sequence per input"),
        ({"output_scores": True}, "one sequence per input"),
        ({"temperature": 0, "do_sample": True}, "'temperature']=0: must be a number > 0"),
        ({"top_p": 1.5}, "'top_p']=1.5: must be a number in (0, 1]"),
        ({"do_sample": "yes"}, "'do_sample']='yes': must be true or false"),
        ({"top_k": -1}, "'top_k']=-1: must be an integer >= 0"),
        ({"max_length": True}, "'max_length']=True: must be a positive integer"),
        ({"early_stopping": "sometimes"}, "'early_stopping']='sometimes'"),
        ({"_from_model_config": True}, "not a generate() argument"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_a_hand_edited_generate_argument_is_refused_at_load_naming_the_file_and_key(generation, words):
    with pytest.raises(ValueError, match="saved.json") as err:
        HybridConfig.from_dict(_inference(**generation), source="saved.json")
    assert words in str(err.value)


def test_legitimate_saved_generate_arguments_still_load():
    generation = dict(max_new_tokens=8, num_beams=4, length_penalty=-0.5, early_stopping="never", do_sample=False)
    generation.update(top_k=0, no_repeat_ngram_size=3, repetition_penalty=1.2, min_new_tokens=0)
    config = HybridConfig.from_dict(_inference(**generation), source="saved.json")
    assert config.inference.generation == generation


def test_a_config_folder_whose_json_is_a_list_is_refused_naming_the_file(tmp_path):
    model, _ = tiny_model("lora")
    model.save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"hybrid_config.json must hold a JSON object"):
        HybridModel.from_pretrained(tmp_path, t5_from_preset("tiny")[0])


# --- adapter lifecycle ---------------------------------------------------------------------
def _two():
    model, tok = tiny_model("hybrid", num_virtual_tokens=2)
    model.add_adapter("b", HybridConfig(mode="lora", r=2, lora_dropout=0.0))
    return model, tok


def test_deleting_the_active_adapter_is_refused_and_it_stays_usable():
    model, _ = _two()
    with pytest.raises(ValueError, match="is the active adapter"):
        model.delete_adapter("default")
    assert list(model.adapters) == ["default", "b"] and model.active_adapter == "default"


def test_deleting_or_setting_an_unknown_adapter_names_the_loaded_ones():
    model, _ = _two()
    for call in (model.delete_adapter, model.set_adapter):
        with pytest.raises(ValueError, match=r"No adapter named 'zz'; loaded adapters are \['b', 'default'\]"):
            call("zz")


def test_adding_a_name_twice_is_refused_and_the_first_is_kept():
    model, _ = _two()
    before = {k: v.clone() for k, v in model.adapter_tensors("b").items()}
    with pytest.raises(ValueError, match="already loaded"):
        model.add_adapter("b", HybridConfig(mode="prompt", num_virtual_tokens=3))
    assert all(torch.equal(before[k], v) for k, v in model.adapter_tensors("b").items())


def test_delete_then_add_the_same_name_gives_a_fresh_adapter_and_base_rows_are_unchanged():
    model, tok = _two()
    batch = tok(["hello there"], return_tensors="pt")
    base_before = model.generate(**batch, adapter_names=["__base__"], max_new_tokens=4)
    model.delete_adapter("b")
    model.add_adapter("b", HybridConfig(mode="lora", r=2, lora_dropout=0.0))
    assert all(float(t.abs().sum()) == 0 for k, t in model.adapter_tensors("b").items() if "lora_B" in k)
    assert torch.equal(model.generate(**batch, adapter_names=["b"], max_new_tokens=4), base_before)
    assert torch.equal(model.generate(**batch, adapter_names=["__base__"], max_new_tokens=4), base_before)


def test_a_deleted_adapter_named_in_a_mixed_batch_is_refused():
    model, tok = _two()
    model.delete_adapter("b")
    batch = tok(["a", "b"], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="'b'"):
        model.generate(**batch, adapter_names=["default", "b"], max_new_tokens=2)


def test_load_adapter_under_a_loaded_name_is_refused_before_reading_anything(tmp_path):
    model, _ = _two()
    with pytest.raises(ValueError, match="already loaded"):
        model.load_adapter(tmp_path / "does-not-exist", "b")


def test_a_full_adapter_beside_others_is_refused():
    model, _ = _two()
    with pytest.raises(ValueError, match="mode 'full' trains the base itself"):
        model.add_adapter("f", HybridConfig(mode="full"))


def test_save_pretrained_adapter_names_edge_values_are_refused(tmp_path):
    model, _ = _two()
    for names, words in (([], "non-empty list"), ("b", "non-empty list"), (["b", "b"], "twice"), (["x"], "unknown")):
        with pytest.raises(ValueError, match=words):
            model.save_pretrained(tmp_path, adapter_names=names)
    assert not any(tmp_path.iterdir())


def test_a_missing_subfolder_names_the_adapters_there(tmp_path):
    model, _ = _two()
    model.save_pretrained(tmp_path, adapter_names="all")
    with pytest.raises(AdapterLoadError, match=r"no subfolder 'c'; the adapters in subfolders there are \['b'\]"):
        model.load_adapter(tmp_path, "c", subfolder="c")


def test_the_colon_form_loads_a_local_subfolder_adapter(tmp_path):
    model, tok = _two()
    model.save_pretrained(tmp_path / "multi", adapter_names="all")
    loaded = HybridModel(t5_from_preset("tiny")[0], HybridConfig(mode="none"), tokenizer=tok, adapter_name="idle")
    loaded.load_adapter(f"{tmp_path / 'multi'}:b", "b")
    want, got = model.adapter_tensors("b"), loaded.adapter_tensors("b")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


# --- PEFT interop: odd vanilla folders -----------------------------------------------------
@pytest.fixture
def peft_folder(tmp_path):
    model, _ = tiny_model("lora", r=2)
    model.export_peft(tmp_path / "out")
    return tmp_path / "out" / "lora"


def test_a_peft_folder_without_weights_names_the_missing_file(peft_folder):
    (peft_folder / "adapter_model.safetensors").unlink()
    model, _ = _two()
    with pytest.raises(AdapterLoadError, match=r"adapter_model.safetensors is missing"):
        model.load_adapter(peft_folder, "p")
    assert list(model.adapters) == ["default", "b"]


def test_a_peft_folder_with_only_pickle_weights_is_refused_without_unpickling(peft_folder):
    (peft_folder / "adapter_model.safetensors").rename(peft_folder / "adapter_model.bin")
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors is missing"):
        _two()[0].load_adapter(peft_folder, "p")


def test_a_peft_folder_whose_config_is_damaged_json_names_the_file(peft_folder):
    (peft_folder / "adapter_config.json").write_text('{"r": 2,')
    with pytest.raises(ValueError, match="adapter_config.json"):
        _two()[0].load_adapter(peft_folder, "p")


def test_a_peft_prompt_tuning_folder_is_refused_as_not_lora(tmp_path):
    model, _ = tiny_model("prompt", num_virtual_tokens=2)
    model.export_peft(tmp_path / "out")
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        _two()[0].load_adapter(tmp_path / "out" / "prompt", "p")


def test_a_folder_with_both_configs_loads_as_the_hybrid_adapter(peft_folder, tmp_path):
    model, _ = tiny_model("hybrid", num_virtual_tokens=2)
    model.save_pretrained(tmp_path / "both")
    (tmp_path / "both" / "adapter_config.json").write_bytes((peft_folder / "adapter_config.json").read_bytes())
    loaded = HybridModel.from_pretrained(tmp_path / "both", t5_from_preset("tiny")[0])
    assert loaded.hybrid_config.mode == "hybrid"


# --- mixed batches: dtypes and decoding modes ----------------------------------------------
def _mixed(dtype=torch.float32):
    model, tok = _two()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in model.all_adapter_tensors():
            t.add_(torch.randn(t.shape, generator=gen) * 0.2)
    return model.to(dtype).eval(), tok


TEXTS = ["hello there", "a much longer input about the weather today", "ok"]
NAMES = ["b", "default", "__base__"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_mixed_sampling_batch_repeats_exactly_under_the_same_seed(dtype):
    model, tok = _mixed(dtype)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(model.generate(**batch, adapter_names=NAMES, do_sample=True, top_k=20, max_new_tokens=5))
    assert torch.equal(runs[0], runs[1])


def test_fp32_mixed_sampling_with_top_k_1_equals_greedy():
    model, tok = _mixed()
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    greedy = model.generate(**batch, adapter_names=NAMES, max_new_tokens=5)
    sampled = model.generate(**batch, adapter_names=NAMES, do_sample=True, top_k=1, max_new_tokens=5)
    assert torch.equal(greedy, sampled)


def test_bf16_mixed_batch_keeps_the_prompt_in_the_base_dtype_and_runs_beams():
    model, tok = _mixed(torch.bfloat16)
    assert model.prompts["default"].weight.dtype == torch.bfloat16
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    out = model.generate(**batch, adapter_names=NAMES, num_beams=2, num_return_sequences=2, max_new_tokens=4)
    assert out.shape[0] == 6


def test_fp32_mixed_beam_rows_equal_each_row_alone():
    model, tok = _mixed()
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    settings = dict(num_beams=3, max_new_tokens=5)
    mixed = tok.batch_decode(model.generate(**batch, adapter_names=NAMES, **settings), skip_special_tokens=True)
    alone = [
        tok.decode(model.generate(**tok([t], return_tensors="pt"), adapter_names=[n], **settings)[0], True)
        for t, n in zip(TEXTS, NAMES)
    ]
    assert mixed == alone


def test_adapter_names_of_the_wrong_length_is_refused_naming_both_lengths():
    model, tok = _mixed()
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="3"):
        model.generate(**batch, adapter_names=["b", "default"], max_new_tokens=2)


# --- command-line edges --------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model, tok = tiny_model("lora", task="sst2")
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    return err


def test_predict_adapter_both_a_folder_and_name_eq_path_is_refused_saying_how_to_write_each(
    folder, tmp_path, monkeypatch, capsys
):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(folder, tmp_path / "lr=1e-3")
    (tmp_path / "in.txt").write_text("fine\n")
    assert cli(["predict", "--adapter", "lr=1e-3", "--input", "in.txt", "--no_progress"]) == 2
    message = _error(capsys)
    assert "--adapter ./lr=1e-3 for the folder" in message and "--adapter lr=./1e-3" in message
    assert (
        cli(["predict", "--adapter", "./lr=1e-3", "--input", "in.txt", "--no_progress", "--max_new_tokens", "2"]) == 0
    )


def test_predict_txt_input_of_json_looking_lines_is_text_by_default_and_jsonl_on_request(folder, tmp_path, capsys):
    (tmp_path / "in.txt").write_text('{"text": "a"}\n{"text": "b"}\n')
    argv = ["predict", "--adapter", str(folder), "--no_progress", "--max_new_tokens", "2", "--jsonl"]
    assert cli([*argv, "--input", str(tmp_path / "in.txt")]) == 0
    assert [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()] == [
        '{"text": "a"}',
        '{"text": "b"}',
    ]
    assert cli([*argv, "--input", str(tmp_path / "in.txt"), "--input-format", "jsonl"]) == 0
    assert [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()] == ["a", "b"]


def test_predict_input_format_jsonl_with_a_plain_line_names_the_line(folder, tmp_path, capsys):
    (tmp_path / "in.dat").write_text('{"text": "a"}\nplain\n')
    argv = ["predict", "--adapter", str(folder), "--input", str(tmp_path / "in.dat"), "--input-format", "jsonl"]
    assert cli(argv) == 2
    assert "line 2 is not valid JSON" in _error(capsys)


def test_predict_field_with_text_input_format_is_refused(folder, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"q": "a"}\n')
    argv = ["predict", "--adapter", str(folder), "--input", str(tmp_path / "in.jsonl"), "--input-format", "text"]
    assert cli([*argv, "--field", "q"]) == 2
    assert "--field q applies to JSON Lines input" in _error(capsys)


def test_predict_subfolder_with_several_adapters_is_refused(folder, tmp_path, capsys):
    argv = ["predict", "--adapter", f"a={folder}", "--adapter", f"b={folder}", "--subfolder", "x"]
    assert cli([*argv, "--input", str(tmp_path / "none.txt")]) == 2
    assert "--subfolder picks one adapter" in _error(capsys)


@pytest.mark.parametrize("device", ["tpu9", "cuda", "cuda:7", "", "meta:0"])
def test_predict_device_that_does_not_exist_is_exit_2_naming_device_and_what_exists(device, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        cli(["predict", "--adapter", "x", "--device", device])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device" in err and "use one of ['cpu']" in err and "Traceback" not in err


def test_serve_device_that_does_not_exist_is_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        cli(["serve", "--base", "preset:tiny", "--device", "cuda"])
    assert exit_.value.code == 2 and "argument --device" in capsys.readouterr().err


def test_predict_input_with_a_utf8_byte_order_mark_and_crlf_lines_reads_clean_inputs(folder, tmp_path, capsys):
    (tmp_path / "in.txt").write_bytes("\ufefffirst\r\nsecond\r\n".encode())
    argv = ["predict", "--adapter", str(folder), "--input", str(tmp_path / "in.txt"), "--jsonl", "--no_progress"]
    assert cli([*argv, "--max_new_tokens", "2"]) == 0
    assert [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()] == ["first", "second"]


def test_predict_utf16_input_is_refused_naming_the_file_and_the_byte(folder, tmp_path, capsys):
    (tmp_path / "in.txt").write_bytes("hello\n".encode("utf-16"))
    assert cli(["predict", "--adapter", str(folder), "--input", str(tmp_path / "in.txt")]) == 2
    err = _error(capsys)
    assert "in.txt" in err and "not valid UTF-8" in err


@pytest.mark.parametrize("flag", ["--batch_size", "--max_new_tokens", "--num_beams", "--max_source_length"])
def test_predict_zero_or_negative_counts_are_exit_2_naming_the_flag(folder, flag, capsys):
    for value in ("0", "-3"):
        assert cli(["predict", "--adapter", str(folder), flag, value]) == 2
        assert f"{flag} {value}: pass a positive number" in _error(capsys)


def test_predict_an_empty_adapter_argument_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["predict", "--adapter", "", "--input", "-"]) == 2
    assert "--adapter ''" in _error(capsys)


def test_serve_adapter_name_with_a_trailing_newline_is_refused():
    import argparse

    from peft_hybrid.cli import serve as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--base", "preset:tiny", "--adapter", "y\n=runs/x"])
    with pytest.raises(ValueError, match="expected NAME=PATH_OR_REPO"):
        serve_cli.check(args)


def test_serve_adapter_with_a_repo_subfolder_keeps_the_colon_form_for_loading():
    import argparse

    from peft_hybrid.cli import serve as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--base", "preset:tiny", "--adapter", "sst2=me/tasks:sst2"])
    serve_cli.check(args)
    assert args.adapters == {"sst2": "me/tasks:sst2"}


def test_evaluate_max_eval_samples_zero_and_subfolder_missing_are_exit_2(folder, tmp_path, capsys):
    base = ["evaluate", "--adapter", str(folder), "--out", str(tmp_path / "o")]
    assert cli([*base, "--max_eval_samples", "0"]) == 2
    assert "--max_eval_samples 0" in _error(capsys)
    assert cli([*base, "--subfolder", "nope", "--data_file", str(tmp_path / "x.tsv")]) == 2
    assert "no subfolder 'nope'" in _error(capsys)


def test_push_of_a_folder_without_an_adapter_is_exit_2(tmp_path, capsys):
    assert cli(["push", str(tmp_path), "me/repo"]) == 2
    assert "holds no hybrid_config.json" in _error(capsys)
