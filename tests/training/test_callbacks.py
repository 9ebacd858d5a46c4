"""The callbacks on their own: summary collection and files, driven by hand-made Trainer events."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.inference.decoding import decoded_rows
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.training.callbacks import (
    SUMMARY_NAME,
    EvalOutputWriter,
    EvalRecord,
    TrainingSummary,
    TrainingSummaryCallback,
)


@pytest.fixture
def args(tmp_path):
    return TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        learning_rate=5e-3,
        load_best_model_at_end=True,
        eval_strategy="steps",
        save_strategy="steps",
    )


def _state(step: int, epoch: float) -> TrainerState:
    state = TrainerState()
    state.global_step, state.epoch = step, epoch
    return state


def test_summary_round_trips_and_drops_non_finite_numbers(tmp_path):
    summary = TrainingSummary(task="sst2", training_curve=[{"step": 1, "loss": float("nan")}])
    summary.evaluations.append({"step": 2, "eval_accuracy": 50.0})
    path = summary.save(tmp_path)
    assert path.name == SUMMARY_NAME
    data = json.loads(path.read_text())
    assert data["training_curve"] == [{"step": 1, "loss": None}]
    loaded = TrainingSummary.load(tmp_path)
    assert loaded.to_dict() == data


def test_summary_load_names_the_missing_file_and_unknown_fields(tmp_path):
    with pytest.raises(FileNotFoundError, match=SUMMARY_NAME):
        TrainingSummary.load(tmp_path)
    (tmp_path / SUMMARY_NAME).write_text(json.dumps({"task": None, "surprise": 1}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['surprise'\]"):
        TrainingSummary.load(tmp_path)


def test_summary_callback_collects_a_run(args):
    base, tokenizer = t5_from_preset("tiny")
    model = HybridModel(base, HybridConfig(mode="lora"), tokenizer=tokenizer)
    callback, control = TrainingSummaryCallback(task="samsum"), TrainerControl()
    state = _state(0, 0.0)
    callback.on_train_begin(args, state, control, model=model)
    for step, loss in ((1, 3.0), (2, 2.5)):
        callback.on_log(
            args, _state(step, step / 2), control, logs={"loss": loss, "learning_rate": 1e-3, "epoch": step / 2}
        )
    callback.on_log(args, _state(2, 1.0), control, logs={"eval_loss": 2.0})  # not a training point
    state = _state(2, 1.0)
    state.best_metric, state.best_global_step, state.best_model_checkpoint = 2.0, 2, "out/checkpoint-2"
    callback.on_evaluate(args, state, control, metrics={"eval_loss": 2.0, "eval_rougeL": 10.0})
    state = _state(4, 2.0)
    state.best_metric, state.best_global_step, state.best_model_checkpoint = 2.0, 2, "out/checkpoint-2"
    callback.on_evaluate(args, state, control, metrics={"eval_loss": 2.2, "eval_rougeL": 9.0})
    callback.on_train_end(args, state, control)

    data = json.loads((Path(args.output_dir) / SUMMARY_NAME).read_text())
    assert data["task"] == "samsum"
    assert data["hyperparameters"]["learning_rate"] == 5e-3
    assert data["hyperparameters"]["adapter"] == model.hybrid_config.adapter_settings()
    # TrainingArguments hold enums; the summary (and so the card) holds their plain values.
    hyperparameters = callback.summary.hyperparameters
    assert (hyperparameters["lr_scheduler_type"], hyperparameters["optim"]) == ("linear", args.optim.value)
    assert {type(hyperparameters[k]) for k in ("lr_scheduler_type", "optim")} == {str}
    assert data["model"] == {
        "mode": "lora",
        "base_model": "preset:tiny",
        "trainable_params": model.num_parameters(True),
        "total_params": model.num_parameters(),
        "base_quantization": None,
    }
    assert data["training_curve"] == [
        {"step": 1, "epoch": 0.5, "loss": 3.0, "learning_rate": 1e-3},
        {"step": 2, "epoch": 1.0, "loss": 2.5, "learning_rate": 1e-3},
    ]
    assert [e["step"] for e in data["evaluations"]] == [2, 4]
    assert data["best"] == {"metric": "loss", "value": 2.0, "step": 2, "checkpoint": "checkpoint-2"}
    # The best adapter is what the model holds at the end, so its evaluation is the final one.
    assert data["final"] == {"step": 2, "epoch": 1.0, "eval_loss": 2.0, "eval_rougeL": 10.0}


def test_writer_writes_predictions_and_metrics_per_evaluation(args, tmp_path):
    writer, control = EvalOutputWriter(), TrainerControl()
    rows = decoded_rows(["Amy: hi\r\nBen: hey"], ["Amy greets Ben."], ["Amy says hi."])
    writer.pending = EvalRecord("eval", rows)
    writer.on_evaluate(args, _state(10, 1.0), control, metrics={"eval_loss": 1.5, "eval_rouge1": 40.0})
    assert json.loads((tmp_path / "eval_metrics-10.json").read_text()) == {
        "step": 10,
        "epoch": 1.0,
        "eval_loss": 1.5,
        "eval_rouge1": 40.0,
    }
    lines = (tmp_path / "eval_predictions-10.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"source": "Amy: hi\r\nBen: hey", "reference": "Amy greets Ben.", "prediction": "Amy says hi."}
    ]
    assert writer.pending is None
    # Without decoded rows (a plain Trainer) only the metrics are written, under the metrics' prefix.
    writer.on_predict(args, _state(12, 1.0), control, metrics={"test_loss": math.inf})
    assert json.loads((tmp_path / "test_metrics-12.json").read_text())["test_loss"] is None
    assert not (tmp_path / "test_predictions-12.jsonl").exists()


def test_writer_stays_quiet_on_other_ranks(args, tmp_path):
    writer = EvalOutputWriter()
    state = _state(3, 1.0)
    state.is_world_process_zero = False
    writer.pending = EvalRecord("eval", [])
    writer.on_evaluate(args, state, TrainerControl(), metrics={"eval_loss": 1.0})
    assert list(tmp_path.iterdir()) == [] and writer.pending is None
