"""Recipes: argument parsing (YAML + overrides), the paper's configs, runs on synthetic and real data."""

import csv
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import quick_run_args, samsum_csv
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.inference import evaluate_rows, load_for_inference
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.tasks import get_task
from peft_hybrid.training.recipe import RESULTS_NAME, main, parse_args

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
# A quick CPU run: fp32, a couple of steps, one evaluation at the end.
QUICK = quick_run_args(
    max_steps=2,
    warmup_steps=0,
    eval_strategy="steps",
    eval_steps=2,
    save_strategy="steps",
    save_steps=2,
    logging_steps=1,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
)


def _rescored(task, written_rows):
    """The task's metrics of prediction rows a run wrote (``prediction`` and ``reference`` per row)."""
    predictions = [r["prediction"] for r in written_rows]
    return task.compute_metrics(predictions, [{"target": r["reference"]} for r in written_rows])


# --- parsing ------------------------------------------------------------------------------
def test_yaml_gives_defaults_and_the_command_line_wins(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "learning_rate: 0.01\nr: 8\ntarget_modules: [q, k, v]\nmax_train_samples: 5\nmode: lora\n", encoding="utf-8"
    )
    script, hybrid, training = parse_args(
        [
            "--config",
            str(config),
            "--learning_rate",
            "0.02",
            "--r",
            "2",
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
        ],
        task="sst2",
    )
    assert training.learning_rate == 0.02  # command line over YAML
    assert hybrid.r == 2
    assert hybrid.target_modules == ["q", "k", "v"]  # YAML over the default
    assert hybrid.mode == "lora"
    assert script.max_train_samples == 5
    assert training.weight_decay == 1e-3  # untouched default
    assert training.task == "sst2" and training.metric_for_best_model == "accuracy"
    assert hybrid.task == "sst2" and hybrid.seed == training.seed == 42


@pytest.mark.parametrize(
    "task, metric", [("samsum", "rougeL"), ("wikisql", "logical_form_accuracy"), ("sst2", "accuracy")]
)
def test_recipe_configs_hold_the_papers_hyperparameters(task, metric, tmp_path):
    # --use_cpu: the configs ask for bf16, which this CPU-only machine runs through CPU autocast.
    script, hybrid, training = parse_args(
        ["--config", str(RECIPES / "configs" / f"{task}.yaml"), "--output_dir", str(tmp_path), "--use_cpu", "true"],
        task=task,
    )
    assert script.model_name_or_path == "google/flan-t5-base"
    assert (hybrid.mode, hybrid.r, hybrid.lora_alpha, hybrid.target_modules) == ("hybrid", 4, 4, ["q", "v"])
    assert (hybrid.lora_dropout, hybrid.num_virtual_tokens) == (0.05, 30)
    assert training.bf16 is True
    assert (training.per_device_train_batch_size, training.per_device_eval_batch_size) == (16, 16)
    assert (training.learning_rate, training.weight_decay, training.adam_epsilon) == (1e-3, 1e-3, 1e-8)
    assert (training.adam_beta1, training.adam_beta2, training.max_grad_norm) == (0.9, 0.999, 1.0)
    assert training.lr_scheduler_type.value == "cosine" and training.warmup_steps == 500
    assert training.num_train_epochs == 20 and training.early_stopping_patience == 3
    assert training.load_best_model_at_end and training.metric_for_best_model == metric


def test_each_recipe_script_is_the_package_recipe_with_its_task_fixed():
    for task in ("samsum", "wikisql", "sst2"):
        text = (RECIPES / f"{task}.py").read_text(encoding="utf-8")
        assert f'TASK = "{task}"' in text
        assert "accelerate launch" in text and f"recipes/configs/{task}.yaml" in text
        assert f"## {task}" in (RECIPES / "README.md").read_text(encoding="utf-8").lower()


def test_invalid_yaml_names_the_file(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("learning_rate: [0.1, 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.yaml is not valid YAML"):
        parse_args(["--config", str(config), "--output_dir", str(tmp_path)], task="sst2")


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("learning_rat: 0.1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"typo\.yaml: unknown key\(s\) \['learning_rat'\]"):
        parse_args(["--config", str(config), "--output_dir", str(tmp_path)], task="sst2")


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml: file not found"):
        parse_args(["--config", str(tmp_path / "nope.yaml")], task="sst2")


def test_lora_with_rank_zero_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"r=0: mode 'lora' uses LoRA, so r must be a positive integer"):
        parse_args(["--mode", "lora", "--r", "0", "--output_dir", str(tmp_path), "--use_cpu", "true"], task="sst2")


def test_a_recipe_refuses_another_task(tmp_path):
    with pytest.raises(ValueError, match=r"this recipe trains task 'sst2'; --task 'samsum'"):
        parse_args(["--task", "samsum", "--output_dir", str(tmp_path), "--use_cpu", "true"], task="sst2")


def test_hub_dataset_and_local_files_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match="dataset_id and local files"):
        parse_args(
            ["--dataset_id", "me/sst2", "--train_file", "t.tsv", "--output_dir", str(tmp_path), "--use_cpu", "true"],
            task="sst2",
        )


def test_training_without_train_file_is_refused(tmp_path):
    val = samsum_csv(tmp_path / "val.csv", 4, seed=1)
    args = parse_args(["--validation_file", str(val), "--output_dir", str(tmp_path / "out"), *QUICK], task="samsum")
    with pytest.raises(ValueError, match="mode 'hybrid' trains an adapter: pass --train_file"):
        main(*args)


# --- runs ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_python_recipe_trains_evaluates_and_saves_on_local_samsum_files(tmp_path, monkeypatch):
    train = samsum_csv(tmp_path / "train.csv", 32, seed=0)
    val = samsum_csv(tmp_path / "val.csv", 4, seed=1)
    test = samsum_csv(tmp_path / "test.csv", 3, seed=2)
    out = tmp_path / "run"
    # No evaluation during training: a random tiny model writes all 128 new tokens SAMSum allows.
    no_eval = ["--eval_strategy", "no", "--load_best_model_at_end", "false", "--early_stopping_patience", "0"]
    command = [
        str(RECIPES / "samsum.py"),
        "--config",
        str(RECIPES / "configs" / "samsum.yaml"),
        *QUICK,
        *no_eval,
        "--train_file",
        str(train),
        "--validation_file",
        str(val),
        "--test_file",
        str(test),
        "--max_source_length",
        "128",
        "--max_target_length",
        "32",
        "--output_dir",
        str(out),
    ]
    # The script runs in-process as `python recipes/samsum.py ...` would run it.
    monkeypatch.setattr(sys, "argv", command)
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(RECIPES / "samsum.py"), run_name="__main__")
    assert exit_info.value.code == 0

    results = json.loads((out / RESULTS_NAME).read_text())
    assert results["task"] == "samsum" and results["mode"] == "hybrid"
    assert results["data"]["train"]["examples"] == 32 and results["data"]["test"]["examples"] == 3
    # The reported test metrics are those of the saved adapter, evaluated here directly.
    task = get_task("samsum")
    model, tokenizer = load_for_inference(out)
    direct, predictions = evaluate_rows(
        model, tokenizer, task, task.load(data_file=test), max_source_length=128, progress=False
    )
    assert {key: results["test"][f"test_{key}"] for key in direct} == direct
    written = [json.loads(line) for line in (out / "test_predictions-2.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in written] == [r["prediction"] for r in predictions]
    # ... and the run's own predictions, scored again, give its eval metrics.
    evaluated = [json.loads(line) for line in (out / "eval_predictions-2.jsonl").read_text().splitlines()]
    rescored = task.compute_metrics(
        [r["prediction"] for r in evaluated], [{"target": r["reference"]} for r in evaluated]
    )
    assert {key: results["eval"][f"eval_{key}"] for key in rescored} == rescored
    assert len((out / "test_predictions-2.jsonl").read_text().splitlines()) == 3
    assert results["train"]["train_loss"] > 0 and results["best_checkpoint"] is None

    config = HybridConfig.load(out)
    assert (config.task, config.base_model_name_or_path, config.seed) == ("samsum", "preset:tiny", 42)
    trained = load_file(out / "adapter_model.safetensors")
    base, tokenizer = t5_from_preset("tiny")
    fresh = HybridModel(base, HybridConfig(mode="hybrid", seed=42), tokenizer=tokenizer).adapter_tensors()
    assert set(trained) == set(fresh)
    changed = [k for k in trained if not torch.equal(trained[k], fresh[k].detach())]
    assert "prompt_embeddings" in changed and any("lora_B" in k for k in changed)


@pytest.mark.slow
@pytest.mark.realdata
def test_sst2_recipe_on_the_real_dev_file(shared_data, tmp_path):
    dev = shared_data / "sst2" / "dev.tsv"
    args = parse_args(
        [
            *QUICK,
            "--train_file",
            str(dev),
            "--validation_file",
            str(dev),
            "--max_train_samples",
            "32",
            "--max_eval_samples",
            "32",
            "--max_source_length",
            "64",
            "--output_dir",
            str(tmp_path),
        ],
        task="sst2",
    )
    summary = main(*args)
    assert summary["data"]["validation"]["examples"] == 32
    metrics = summary["eval"]
    rows = [json.loads(line) for line in (tmp_path / "eval_predictions-2.jsonl").read_text().splitlines()]
    assert len(rows) == 32
    # The reported metrics are the task's metric of the run's own predictions.
    rescored = get_task("sst2").compute_metrics(
        [r["prediction"] for r in rows], [{"target": r["reference"]} for r in rows]
    )
    assert metrics["eval_accuracy"] == rescored["accuracy"]
    assert metrics["eval_invalid_outputs"] == rescored["invalid_outputs"]
    # The first 32 rows of the file, in file order (read here, never copied into the repository).
    with open(dev, encoding="utf-8", newline="") as handle:
        first = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:32]
    assert [r["source"] for r in rows] == [" ".join(r["sentence"].split()) for r in first]
    assert [r["reference"] for r in rows] == [("negative", "positive")[int(r["label"])] for r in first]
    labels = {row["reference"] for row in rows}
    assert labels == {"positive", "negative"}


@pytest.mark.parametrize(
    "command, options",
    [
        ("train", ("--train_file", "--model_preset", "--mode", "--lora_alpha", "--learning_rate", "--config")),
        ("evaluate", ("--adapter", "--split", "--data_file", "--out", "--batch_size")),
        ("predict", ("--adapter", "--input", "--batch-size", "--max-new-tokens")),
    ],
)
def test_every_command_has_help(command, options, capsys):
    from peft_hybrid.cli import main as cli

    with pytest.raises(SystemExit) as exit_info:
        cli([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for option in options)


def test_use_dora_flag_reaches_the_adapter_config_and_needs_a_mode_with_lora(tmp_path):
    common = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    _, hybrid, _ = parse_args(["--mode", "lora", "--use_dora", "true", *common], task="sst2")
    assert hybrid.use_dora is True and hybrid.part_kinds == ("dora",)
    with pytest.raises(ValueError, match=r"use_dora=True needs a mode with LoRA \('lora' or 'hybrid'\), not 'prompt'"):
        parse_args(["--mode", "prompt", "--use_dora", "true", *common], task="sst2")


@pytest.mark.slow
def test_a_dora_run_trains_saves_and_reloads_with_its_magnitudes_and_card_line(tmp_path):
    train = samsum_csv(tmp_path / "train.csv", n=8)
    out = tmp_path / "dora"
    args = parse_args(
        ["--mode", "lora", "--use_dora", "true", "--r", "2", "--lora_dropout", "0", "--train_file", str(train)]
        + ["--validation_file", str(train), "--output_dir", str(out), "--learning_rate", "0.05", *QUICK],
        task="samsum",
    )
    main(*args)
    model = HybridModel.from_pretrained(out, t5_from_preset("tiny")[0])
    assert model.hybrid_config.use_dora is True
    tensors = load_file(str(out / "adapter_model.safetensors"))
    magnitudes = [k for k in tensors if k.endswith(".lora_magnitude_vector")]
    assert len(magnitudes) == 12
    fresh = HybridModel(t5_from_preset("tiny")[0], HybridConfig(mode="lora", r=2, use_dora=True))
    assert any(not torch.equal(tensors[k], fresh.adapter_tensors()[k]) for k in magnitudes)  # the magnitudes trained
    assert "Method: DoRA (LoRA with a trained magnitude per output channel)" in (out / "README.md").read_text()
