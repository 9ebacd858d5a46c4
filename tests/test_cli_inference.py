"""``peft-hybrid evaluate`` / ``predict`` on a saved tiny adapter: exact round trips and clear errors."""

import json

import pytest
import torch

from helpers import tiny_model
from peft_hybrid.cli import main as cli
from peft_hybrid.inference import generate_texts, load_for_inference
from peft_hybrid.offline.synthetic import sentiment_sentences, write_sst2_tsv
from peft_hybrid.tasks import get_task

N = 10


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A perturbed tiny sst2 adapter saved with its tokenizer, the in-memory model, and a GLUE TSV."""
    folder = tmp_path_factory.mktemp("adapter")
    model, tokenizer = tiny_model("hybrid", task="sst2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rows = sentiment_sentences(N, seed=3)
    tsv = write_sst2_tsv(folder.parent / "dev.tsv", rows)
    return folder, model, tokenizer, tsv, [r["sentence"] for r in rows]


def expected_outputs(model, tokenizer, texts, batch_size, **generation):
    """What the in-memory model generates, batch by batch in input order."""
    outputs = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            ids = model.generate(**enc, **generation)
        outputs += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return outputs


def test_load_for_inference_restores_the_adapter_on_its_preset_base(saved):
    folder, model, _, _, _ = saved
    loaded, tokenizer = load_for_inference(folder, device="cpu")
    assert loaded.hybrid_config.base_model_name_or_path == "preset:tiny"
    assert not loaded.training
    for key, value in model.adapter_tensors().items():
        assert torch.equal(loaded.adapter_tensors()[key], value), key
    for (name, a), b in zip(model.base_model.named_parameters(), loaded.base_model.parameters()):
        assert torch.equal(a, b), name


def test_evaluate_writes_metrics_and_predictions_of_the_saved_adapter(saved, tmp_path, capsys):
    folder, model, tokenizer, tsv, sentences = saved
    out = tmp_path / "eval"
    code = cli(
        [
            "evaluate",
            "--adapter",
            str(folder),
            "--data_file",
            str(tsv),
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert (report["task"], report["split"], report["examples"], report["mode"]) == ("sst2", "validation", N, "hybrid")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == sentences
    predictions = [r["prediction"] for r in rows]
    assert predictions == expected_outputs(model, tokenizer, sentences, 4, **get_task("sst2").generation_kwargs)
    assert report["metrics"] == get_task("sst2").compute_metrics(predictions, get_task("sst2").load(data_file=tsv))
    assert json.loads(capsys.readouterr().out)["examples"] == N


def test_predict_prints_one_output_per_input_line(saved, tmp_path, capsys):
    folder, model, tokenizer, _, sentences = saved
    text_file = tmp_path / "inputs.txt"
    text_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    # The same batching and generation cap for both input formats: only the reading differs.
    predict = ["predict", "--adapter", str(folder), "--batch-size", "3", "--max-new-tokens", "5", "--no-progress"]
    assert cli([*predict, "--input", str(text_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        " ".join(o.splitlines())
        for o in expected_outputs(model, tokenizer, sentences, 3, max_new_tokens=5, num_beams=1)
    ]

    jsonl = tmp_path / "inputs.jsonl"
    jsonl.write_text("".join(json.dumps({"sentence": s}) + "\n" for s in sentences[:4]), encoding="utf-8")
    assert cli([*predict, "--input", str(jsonl), "--field", "sentence", "--jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in records] == sentences[:4]
    assert [r["prediction"] for r in records] == lines[:3] + expected_outputs(
        model, tokenizer, sentences[3:4], 3, max_new_tokens=5
    )


def test_generate_texts_keeps_input_order_across_batches(saved):
    _, model, tokenizer, _, sentences = saved
    one_by_one = generate_texts(model, tokenizer, sentences[:5], batch_size=1, progress=False, max_new_tokens=4)
    assert one_by_one == expected_outputs(model, tokenizer, sentences[:5], 1, max_new_tokens=4)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--adapter", "{missing}", "--task", "sst2", "--out", "{tmp}"], "no such folder"),
        (["evaluate", "--adapter", "{adapter}", "--data_file", "{tmp}/none.tsv", "--out", "{tmp}"], "file not found"),
        (["predict", "--adapter", "{adapter}", "--input", "{tmp}/none.txt"], "--input"),
        (["predict", "--adapter", "{adapter}", "--batch-size", "0"], "--batch_size 0: pass a positive number"),
        (["evaluate", "--adapter", "{adapter}", "--task", "nope", "--out", "{tmp}"], "unknown task 'nope'"),
    ],
)
def test_bad_input_exits_2_with_a_one_line_reason(saved, tmp_path, capsys, argv, message):
    folder = saved[0]
    argv = [a.format(missing=tmp_path / "no-such-adapter", tmp=tmp_path, adapter=folder) for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_generate_texts_runs_merged_and_puts_the_model_back(saved):
    """No LoRA layer runs during generation (LoRA is merged into plain Linears), the outputs are
    the unmerged model's, and afterwards the LoRA layers and base weights are the same objects."""
    from peft.tuners.lora import LoraLayer

    _, model, tokenizer, _, sentences = saved
    lora_layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    weights = {name: m.get_base_layer().weight for name, m in lora_layers.items()}
    before = {name: w.detach().clone() for name, w in weights.items()}
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in lora_layers.values()]
    try:
        merged = generate_texts(model, tokenizer, sentences[:4], batch_size=2, progress=False, max_new_tokens=4)
    finally:
        for hook in hooks:
            hook.remove()
    assert lora_layers and calls == []
    assert merged == expected_outputs(model, tokenizer, sentences[:4], 2, max_new_tokens=4)
    after = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert all(after[name] is layer for name, layer in lora_layers.items())
    assert all(after[n].get_base_layer().weight is weights[n] and torch.equal(weights[n], before[n]) for n in weights)


@pytest.mark.parametrize("generation", [{"num_beams": 0}, {"max_new_tokens": "5"}, {"sampling": True}])
def test_predict_on_hand_edited_generation_settings_is_exit_2_naming_the_file_and_key(tmp_path, capsys, generation):
    model, tok = tiny_model("lora", task="sst2")
    model.save_pretrained(tmp_path / "a")
    tok.save_pretrained(tmp_path / "a")
    config_file = tmp_path / "a" / "hybrid_config.json"
    data = json.loads(config_file.read_text())
    data["inference"] = {"generation": generation}
    config_file.write_text(json.dumps(data))
    (tmp_path / "in.txt").write_text("fine\n")
    assert (
        cli(["predict", "--adapter", str(tmp_path / "a"), "--input", str(tmp_path / "in.txt"), "--no_progress"]) == 2
    )
    err = capsys.readouterr().err
    key = next(iter(generation))
    assert "Traceback" not in err and str(config_file) in err and f"inference.generation[{key!r}]" in err
