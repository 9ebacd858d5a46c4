"""`peft-hybrid ablate`: one table row per mode, exact parameter counts, metrics that match a
direct evaluation of each saved adapter."""

import json

import pytest

from helpers import FIXED_STEPS, quick_run_args
from peft_hybrid.cli import main as cli_main
from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.inference import evaluate_rows, load_for_inference
from peft_hybrid.modeling.serialization import WEIGHTS_NAME
from peft_hybrid.offline.synthetic import dialogue_summary_pairs, write_samsum_csv
from peft_hybrid.tasks import get_task
from peft_hybrid.training.ablation import AblationResult, AblationRow, ablation_modes

# Tiny preset: prompt 30 x 64; LoRA r4 on q,v of 2 encoder + 2x2 decoder attentions: 12 x 4 x (64 + 64).
EXPECTED_TRAINABLE = {"none": 0, "prompt": 1_920, "lora": 6_144, "hybrid": 8_064}


@pytest.mark.slow
def test_ablate_table_counts_and_metrics_equal_direct_evaluation(tmp_path, capsys):
    records = dialogue_summary_pairs(40, seed=5)
    train = str(write_samsum_csv(tmp_path / "train.csv", records[:32]))
    validation = str(write_samsum_csv(tmp_path / "validation.csv", records[32:]))
    out = tmp_path / "ablation"
    code = cli_main(
        quick_run_args(
            "ablate",
            "--task",
            "samsum",
            train_file=train,
            validation_file=validation,
            output_dir=out,
            max_steps=3,
            learning_rate=0.05,
            warmup_steps=0,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=4,
            eval_strategy="no",
            save_strategy="no",
            **FIXED_STEPS,
            disable_tqdm=True,
            max_source_length=64,
        )
    )
    assert code == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "ablation.json").read_text())
    assert [r["mode"] for r in data["rows"]] == ["none", "prompt", "lora", "hybrid"]
    assert {r["mode"]: r["trainable_params"] for r in data["rows"]} == EXPECTED_TRAINABLE
    assert data["settings"]["max_steps"] == 3 and data["settings"]["use_task_tags"] is False
    table = (out / "ablation.md").read_text()
    assert "| mode | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | trainable params |" in table
    assert table.count("\n| ") == 5 and printed.count("\n| ") == 5  # header + 4 rows
    assert "| hybrid |" in table and "| 8,064 |" in table

    task = get_task("samsum")
    rows = task.load(data_file=validation)
    scores = set()
    for row in data["rows"]:
        folder = out / row["mode"]
        assert (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()
        model, tokenizer = load_for_inference(folder, device="cpu")
        assert model.hybrid_config.mode == row["mode"]
        assert model.num_parameters(trainable_only=True) == row["trainable_params"]
        metrics, _ = evaluate_rows(model, tokenizer, task, rows, batch_size=4, max_source_length=64, progress=False)
        assert {k: row["metrics"][k] for k in metrics} == pytest.approx(metrics, abs=1e-9)
        scores.add(round(metrics["rougeL"], 6))
    # The trained rows moved away from the base: the equality above is not four copies of one number.
    assert len(scores) > 1


def test_ablation_modes_validation():
    assert ablation_modes() == ["none", "prompt", "lora", "hybrid"]
    assert ablation_modes(["lora", "hybrid"], include_full=True) == ["lora", "hybrid", "full"]
    with pytest.raises(ValueError, match="not valid"):
        ablation_modes(["lora", "qlora"])
    with pytest.raises(ValueError, match="twice"):
        ablation_modes(["lora", "lora"])


def test_ablate_cli_refuses_bad_modes_and_a_single_mode(tmp_path, capsys):
    assert cli_main(["ablate", "--task", "sst2", "--modes", "none,bogus", "--output_dir", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err
    assert cli_main(["ablate", "--task", "sst2", "--mode", "lora", "--output_dir", str(tmp_path)]) == 2
    assert "--modes" in capsys.readouterr().err


def test_markdown_table_orders_card_metrics_first(tmp_path):
    result = AblationResult(task="sst2", split="validation")
    result.rows = [
        AblationRow("none", 0, 10, {"invalid_outputs": 3.0, "accuracy": 50.0}, "x/none", 1.0),
        AblationRow("hybrid", 8064, 10, {"invalid_outputs": 0.0, "accuracy": 87.5}, "x/hybrid", 1.0),
    ]
    assert result.markdown() == (
        "| mode | Accuracy | invalid_outputs | trainable params |\n"
        "|---|---:|---:|---:|\n"
        "| none | 50.00 | 3.00 | 0 |\n"
        "| hybrid | 87.50 | 0.00 | 8,064 |\n"
    )
    paths = result.save(tmp_path)
    assert json.loads(paths["json"].read_text())["rows"][1]["metrics"]["accuracy"] == 87.5
    assert result.row("hybrid").trainable_params == 8064


def test_use_dora_applies_to_the_rows_with_lora_only():
    from peft_hybrid.config import HybridConfig
    from peft_hybrid.training.ablation import ablation_config

    config = HybridConfig(use_dora=True, r=8)
    rows = {mode: ablation_config(config, mode) for mode in ablation_modes(include_full=True)}
    assert {mode: c.part_kinds for mode, c in rows.items()} == {
        "none": (),
        "prompt": ("prompt",),
        "lora": ("dora",),
        "hybrid": ("dora", "prompt"),
        "full": (),
    }
    assert all(c.r == 8 for c in rows.values())
