"""`peft-hybrid demo` end to end through the command line's entry point, then its outputs checked."""

import json
import warnings

import pytest
import torch

from peft_hybrid import HybridModel
from peft_hybrid.cli import main as cli_main
from peft_hybrid.modeling.serialization import WEIGHTS_NAME
from peft_hybrid.offline.demo import median_example, run_demo
from peft_hybrid.tasks.samsum import rouge


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capfd):
    out = tmp_path / "demo"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_main(["demo", "--output-dir", str(out), "--quiet"]) == 0
    printed, errors = capfd.readouterr()
    assert "ROUGE on 64 held-out dialogues" in printed and "(identical)" in printed
    # Nothing the user cannot act on: no Python warnings a user sees (Python's default filters hide deprecations
    # raised in library code), no logged warnings (transformers logs to the file descriptor).
    shown = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert [f"{w.category.__name__}: {w.message}" for w in shown] == []
    assert "warn" not in errors.lower(), errors

    adapter = out / "adapter"
    for name in ("hybrid_config.json", WEIGHTS_NAME, "README.md", "tokenizer_config.json"):
        assert (adapter / name).is_file(), name
    assert (out / "base" / "model.safetensors").is_file() and (out / "data" / "train.csv").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == 8_064
    assert summary["seconds"]["total"] > 0 and summary["pretrain"]["final_loss"] < summary["pretrain"]["first_loss"]

    # Metrics JSON of the evaluation = the summary's adapter ROUGE; the default seed clears 50 ROUGE-L.
    metrics = json.loads(next(adapter.glob("eval_metrics-*.json")).read_text())
    assert summary["rouge"]["adapter"]["rougeL"] == round(metrics["eval_rougeL"], 2)
    assert summary["rouge"]["adapter"]["rougeL"] >= 50
    assert summary["rouge"]["adapter"]["rougeL"] > summary["rouge"]["base"]["rougeL"] + 10
    assert all(g > 0 for g in summary["rouge"]["gain"].values())
    assert "hybrid" in (adapter / "README.md").read_text()

    # The sample is the held-out example of median ROUGE-L, scored here one by one from the predictions file.
    rows = [json.loads(line) for line in next(adapter.glob("eval_predictions-*.jsonl")).read_text().splitlines()]
    scores = [rouge([r["prediction"]], [r["reference"]])["rougeL"] for r in rows]
    sample = summary["sample"]
    assert len(rows) == 64 and sample["rougeL"] == round(sorted(scores)[31], 2)
    assert rows[sample["index"]]["source"] == sample["dialogue"]
    assert rows[sample["index"]]["prediction"] == sample["prediction"]
    assert f"ROUGE-L {sample['rougeL']:.2f}" in printed and sample["prediction"] in printed

    # The adapter alone names its base: reload it here and get the demo's prediction back.
    config = json.loads((adapter / "hybrid_config.json").read_text())
    assert config["base_model_name_or_path"] == str(out / "base")
    model = HybridModel.from_pretrained(adapter).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    batch = tokenizer([sample["dialogue"]], return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**batch, max_new_tokens=128, num_beams=1)
    text = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)[0].strip()
    assert text == sample["prediction"] == sample["reloaded_prediction"]
    assert summary["reload_identical"] is True


def _miniature(folder, seed):
    summary = run_demo(
        folder, seed=seed, pretrain_steps=3, train_steps=3, train_examples=16, eval_examples=5, progress=False
    )
    for volatile in ("seconds", "paths"):
        summary.pop(volatile)
    summary["pretrain"].pop("seconds")
    return summary


@pytest.mark.slow
def test_the_same_seed_gives_the_same_numbers(tmp_path):
    torch.set_num_threads(1)
    first = _miniature(tmp_path / "a", seed=4)
    assert _miniature(tmp_path / "b", seed=4) == first
    assert first["sample"]["index"] in range(5) and first["pretrain"]["steps"] == 3


def test_the_median_example_is_computed_and_ties_go_to_the_earlier_row():
    rows = [{"reference": "a b c d", "prediction": p} for p in ("a b c d", "x", "a b", "a", "a b c")]
    assert median_example(rows) == (2, 66.67)  # ROUGE-L 100, 0, 66.67, 40, 85.71: the middle one
    even = rows[:4]  # 100, 0, 66.67, 40: the lower of the two middle scores
    assert median_example(even) == (3, 40.0)
    tied = [{"reference": "a b", "prediction": p} for p in ("z", "a b", "a b", "a b", "z")]
    assert median_example(tied) == (1, 100.0)  # rows 1-3 tie at the median score: the earliest of them
    with pytest.raises(ValueError, match="eval_examples"):
        median_example([])


def test_demo_refuses_a_non_empty_output_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        run_demo(tmp_path)
    with pytest.raises(ValueError, match="train_steps=0"):
        run_demo(tmp_path / "new", train_steps=0)
