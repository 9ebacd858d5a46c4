"""``peft-hybrid predict`` / ``evaluate`` with ``--quantize``: the adapter on a bitsandbytes-quantized base."""

import json

import pytest

pytest.importorskip("bitsandbytes")

from helpers import tiny_model  # noqa: E402
from peft_hybrid.cli import main as cli  # noqa: E402
from peft_hybrid.inference import (  # noqa: E402
    evaluate_rows,
    generate_texts,
    generation_settings,
    load_for_inference,
    model_inputs,
    source_length,
)
from peft_hybrid.modeling.quantization import bnb_config  # noqa: E402
from peft_hybrid.offline.synthetic import sentiment_sentences, write_sst2_tsv  # noqa: E402
from peft_hybrid.tasks import get_task  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A perturbed tiny sst2 adapter (trained in full precision) saved with its tokenizer, and a GLUE TSV."""
    folder = tmp_path_factory.mktemp("adapter")
    model, tokenizer = tiny_model("hybrid", task="sst2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rows = sentiment_sentences(6, seed=3)
    return folder, write_sst2_tsv(folder.parent / "dev.tsv", rows), [r["sentence"] for r in rows]


@pytest.mark.parametrize("quantize", ["bitsandbytes-nf4", "bitsandbytes-fp4", "bitsandbytes"])
def test_predict_with_quantize_generates_as_the_adapter_on_the_quantized_base(saved, tmp_path, capsys, quantize):
    folder, _, sentences = saved
    source = tmp_path / "in.txt"
    source.write_text("\n".join(sentences) + "\n")
    args = ["predict", "--adapter", str(folder), "--input", str(source), "--no_progress", "--quantize", quantize]
    assert cli(args) == 0
    got = capsys.readouterr().out.splitlines()
    model, tokenizer = load_for_inference(folder, device="cpu", quantization_config=bnb_config(quantize))
    assert model.quantization["method"] == quantize
    config = model.hybrid_config
    settings = {**generation_settings(config, None), "max_source_length": source_length(config, None)}
    want = generate_texts(model, tokenizer, model_inputs(config, sentences), progress=False, **settings)
    assert got == [" ".join(w.splitlines()) for w in want]


def test_evaluate_with_quantize_scores_the_adapter_on_the_quantized_base(saved, tmp_path, capsys):
    folder, tsv, _ = saved
    out = tmp_path / "eval"
    args = ["evaluate", "--adapter", str(folder), "--data_file", str(tsv), "--out", str(out), "--no_progress"]
    assert cli([*args, "--quantize", "bitsandbytes-nf4", "--bnb_4bit_compute_dtype", "float32"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    model, tokenizer = load_for_inference(folder, device="cpu", quantization_config=bnb_config("bitsandbytes-nf4"))
    task = get_task("sst2")
    metrics, predictions = evaluate_rows(model, tokenizer, task, task.load(data_file=tsv), progress=False)
    assert report["metrics"] == metrics and report["examples"] == 6
    written = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in written] == [r["prediction"] for r in predictions]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--quantize", "bitsandbytes", "--bnb_4bit_compute_dtype", "bfloat16"], "4-bit settings"),
        (["--bnb_4bit_compute_dtype", "bfloat16"], "--bnb_4bit_compute_dtype applies to a 4-bit base"),
    ],
)
def test_predict_refuses_a_compute_dtype_without_a_4bit_base(saved, tmp_path, capsys, flags, message):
    folder, _, _ = saved
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    assert cli(["predict", "--adapter", str(folder), "--input", str(source), *flags]) == 2
    assert message in capsys.readouterr().err


def test_quantize_takes_tgi_values_only(saved, capsys):
    folder, _, _ = saved
    with pytest.raises(SystemExit) as exit_info:
        cli(["predict", "--adapter", str(folder), "--quantize", "gptq"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'gptq'" in capsys.readouterr().err
