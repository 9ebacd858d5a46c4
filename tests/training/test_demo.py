"""`peft-hybrid demo` end to end through the command line's entry point, then its outputs checked."""

import json

import pytest
import torch

from peft_hybrid import HybridModel
from peft_hybrid.cli import main as cli_main
from peft_hybrid.serialization import WEIGHTS_NAME


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--output-dir", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "ROUGE on 64 held-out dialogues" in printed and "(identical)" in printed

    adapter = out / "adapter"
    for name in ("hybrid_config.json", WEIGHTS_NAME, "README.md", "tokenizer_config.json"):
        assert (adapter / name).is_file(), name
    assert (out / "base" / "model.safetensors").is_file() and (out / "data" / "train.csv").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == 8_064
    assert summary["seconds"]["total"] > 0 and summary["pretrain"]["final_loss"] < summary["pretrain"]["first_loss"]

    # Metrics JSON of the evaluation = the summary's adapter ROUGE; ROUGE rose clearly over the base.
    metrics = json.loads(next(adapter.glob("eval_metrics-*.json")).read_text())
    assert summary["rouge"]["adapter"]["rougeL"] == round(metrics["eval_rougeL"], 2)
    assert summary["rouge"]["adapter"]["rougeL"] > summary["rouge"]["base"]["rougeL"] + 10
    assert all(g > 0 for g in summary["rouge"]["gain"].values())
    assert "hybrid" in (adapter / "README.md").read_text()

    # The adapter alone names its base: reload it here and get the demo's prediction back.
    config = json.loads((adapter / "hybrid_config.json").read_text())
    assert config["base_model_name_or_path"] == str(out / "base")
    model = HybridModel.from_pretrained(adapter).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    batch = tokenizer([summary["sample"]["dialogue"]], return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**batch, max_new_tokens=128, num_beams=1)
    text = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)[0].strip()
    assert text == summary["sample"]["prediction"] == summary["sample"]["reloaded_prediction"]
    assert summary["reload_identical"] is True


def test_demo_refuses_a_non_empty_output_dir(tmp_path):
    from peft_hybrid.training.demo import run_demo

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        run_demo(tmp_path)
    with pytest.raises(ValueError, match="train_steps=0"):
        run_demo(tmp_path / "new", train_steps=0)
