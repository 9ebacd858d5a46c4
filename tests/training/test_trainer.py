"""HybridTrainer end to end on the tiny preset: training, adapter-only checkpoints, exact resume,
task metrics, early stopping and every mode."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import Seq2SeqTrainingArguments, TrainingArguments

from helpers import FAST_TRAINING as FAST
from helpers import RESUME_RUN, SCALED_LORA
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.offline.synthetic import dialogue_summary_pairs, sentiment_sentences
from peft_hybrid.serialization import WEIGHTS_NAME
from peft_hybrid.tasks import Task, get_task, register_task, unregister_task
from peft_hybrid.training.data import Seq2SeqCollator, tokenize_dataset
from peft_hybrid.training.speed import compile_model
from peft_hybrid.training.trainer import HybridTrainer, HybridTrainingArguments


def _model(mode: str = "hybrid", seed: int = 0, **config):
    base, tokenizer = t5_from_preset("tiny", seed=seed)
    return HybridModel(base, HybridConfig(mode=mode, num_virtual_tokens=4, **config), tokenizer=tokenizer), tokenizer


def _sst2_rows(n: int, seed: int) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [
            {"source": r["sentence"], "target": ("negative", "positive")[r["label"]], "label": r["label"]}
            for r in sentiment_sentences(n, seed)
        ]
    )


def _tokenized(rows: datasets.Dataset, tokenizer, task_name: str = "sst2") -> datasets.Dataset:
    """Task rows with their token columns beside them (what the trainer's metrics read)."""
    formatted = get_task(task_name).format_dataset(rows, use_task_tags=False)
    tokens, _ = tokenize_dataset(formatted, tokenizer, 64, 16)
    return datasets.concatenate_datasets([formatted, tokens], axis=1)


def _args(tmp: Path, **overrides) -> HybridTrainingArguments:
    return HybridTrainingArguments(output_dir=str(tmp), **{**FAST, **overrides})


def _no_eval_args(tmp: Path, **overrides) -> HybridTrainingArguments:
    return _args(tmp, eval_strategy="no", load_best_model_at_end=False, early_stopping_patience=None, **overrides)


def _trainer(model: HybridModel, args, *, tokenizer, **kwargs) -> HybridTrainer:
    """A trainer with the tokenizer and the padding collator every run here uses."""
    return HybridTrainer(model, args, processing_class=tokenizer, data_collator=Seq2SeqCollator(tokenizer), **kwargs)


def _snapshot(tensors: dict) -> dict:
    return {k: v.detach().clone() for k, v in tensors.items()}


def _base_weights(model: HybridModel) -> dict:
    """The base model's own weights (its state dict also holds the injected LoRA layers)."""
    return _snapshot({k: v for k, v in model.base_model.state_dict().items() if "lora_" not in k})


# --- arguments -----------------------------------------------------------------------------
def test_arguments_have_the_paper_defaults(tmp_path):
    args = HybridTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert (args.learning_rate, args.weight_decay, args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (
        1e-3,
        1e-3,
        0.9,
        0.999,
        1e-8,
    )
    assert args.optim.value == "adamw_torch" and args.lr_scheduler_type.value == "cosine"
    assert (args.warmup_steps, args.max_grad_norm, args.num_train_epochs) == (500, 1.0, 20.0)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (16, 16)
    assert args.eval_strategy.value == "epoch" and args.save_strategy.value == "epoch"
    assert args.load_best_model_at_end and args.predict_with_generate
    assert args.train_sampling_strategy == "group_by_length"
    assert args.bf16 is False  # no CUDA here: fp32 with a notice
    assert args.early_stopping_patience == 3 and args.report_to == []
    assert args.average_tokens_across_devices is False and args.ddp_find_unused_parameters is False
    assert (args.max_source_length, args.max_target_length, args.write_predictions) == (512, 128, True)
    assert args.metric_for_best_model == "loss" and args.greater_is_better is False  # no task


def test_task_fills_metric_for_best_model_unless_given(tmp_path):
    samsum = HybridTrainingArguments(output_dir=str(tmp_path), use_cpu=True, task="samsum")
    assert (samsum.metric_for_best_model, samsum.greater_is_better) == (
        get_task("samsum").metric_for_best_model,
        True,
    )
    mine = HybridTrainingArguments(output_dir=str(tmp_path), use_cpu=True, task="sst2", metric_for_best_model="loss")
    assert (mine.metric_for_best_model, mine.greater_is_better) == ("loss", False)


def test_arguments_parse_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(HybridTrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "--task",
            "sst2",
            "--early_stopping_patience",
            "0",
            "--bf16",
            "false",
        ]
    )
    assert (args.metric_for_best_model, args.early_stopping_patience, args.bf16) == ("accuracy", 0, False)


def test_early_stopping_needs_model_selection(tmp_path):
    with pytest.raises(ValueError, match="early_stopping_patience needs load_best_model_at_end"):
        HybridTrainingArguments(output_dir=str(tmp_path), use_cpu=True, load_best_model_at_end=False)
    off = HybridTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, load_best_model_at_end=False, early_stopping_patience=None
    )
    assert off.early_stopping_patience is None


def test_trainer_refuses_other_models_and_conflicting_tasks(tmp_path):
    base, tokenizer = t5_from_preset("tiny")
    with pytest.raises(
        TypeError, match="HybridTrainer trains a peft_hybrid.HybridModel, got T5ForConditionalGeneration"
    ):
        HybridTrainer(base, _args(tmp_path), processing_class=tokenizer)
    model, tokenizer = _model()
    with pytest.raises(ValueError, match="task='samsum' but args.task='sst2'"):
        HybridTrainer(model, _args(tmp_path, task="sst2"), task="samsum", processing_class=tokenizer)


def test_plain_seq2seq_arguments_keep_their_values_and_get_the_added_fields_defaults(tmp_path):
    plain = Seq2SeqTrainingArguments(
        str(tmp_path), learning_rate=0.02, lr_scheduler_type="linear", report_to="none", use_cpu=True, seed=7
    )
    model, tokenizer = _model()
    trainer = HybridTrainer(model, plain, task="sst2", processing_class=tokenizer)
    args = trainer.args
    assert type(args) is HybridTrainingArguments
    parent = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    added = [f for f in dataclasses.fields(HybridTrainingArguments) if f.name not in parent]
    assert {f.name for f in added} >= {"max_source_length", "max_target_length", "merged_eval", "write_predictions"}
    for f in added:
        # Early stopping is the one exception: plain arguments never asked for it (see as_hybrid_arguments).
        expected = None if f.name == "early_stopping_patience" else f.default
        assert getattr(args, f.name) == expected, f.name
    for f in dataclasses.fields(Seq2SeqTrainingArguments):
        if f.init:
            assert getattr(args, f.name) == getattr(plain, f.name), f.name
    # The task does not replace what the plain arguments hold, and nothing stops early.
    assert args.metric_for_best_model is None and trainer.task.name == "sst2"
    assert not any(type(c).__name__ == "EarlyStoppingCallback" for c in trainer.callback_handler.callbacks)
    assert trainer._generation_kwargs({}) == get_task("sst2").generation_kwargs


def test_arguments_of_another_kind_are_refused_naming_what_would_be_lost(tmp_path):
    @dataclasses.dataclass
    class Mine(Seq2SeqTrainingArguments):
        my_setting: int = 1

    model, tokenizer = _model()
    with pytest.raises(TypeError, match=r"\['my_setting'\] that HybridTrainingArguments does not know"):
        HybridTrainer(model, Mine(str(tmp_path), use_cpu=True, report_to="none"), processing_class=tokenizer)
    with pytest.raises(TypeError, match="needs the Seq2Seq fields"):
        HybridTrainer(model, TrainingArguments(str(tmp_path), use_cpu=True), processing_class=tokenizer)


# --- one full training run, inspected from many sides --------------------------------------
@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sst2_run")
    model, tokenizer = _model()
    base_before = _base_weights(model)
    adapter_before = _snapshot(model.adapter_tensors())
    train = _tokenized(_sst2_rows(32, 0), tokenizer)
    val = _tokenized(_sst2_rows(8, 1), tokenizer)
    args = _args(
        out,
        task="sst2",
        learning_rate=1e-2,
        num_train_epochs=4,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        logging_steps=2,
        early_stopping_patience=None,
        save_total_limit=None,
    )
    trainer = _trainer(model, args, train_dataset=train, eval_dataset=val, tokenizer=tokenizer)
    trainer.train()
    return dict(out=out, trainer=trainer, model=model, base_before=base_before, adapter_before=adapter_before)


def test_loss_falls_base_frozen_adapter_trained(sst2_run):
    trainer, model = sst2_run["trainer"], sst2_run["model"]
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert trainer.state.global_step == 32 and len(losses) == 16
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0]
    after = _base_weights(model)
    assert after.keys() == sst2_run["base_before"].keys()
    assert all(torch.equal(after[k], v) for k, v in sst2_run["base_before"].items())
    # load_best_model_at_end restored some epoch's adapter: trained, not the initial one.
    assert all(not torch.equal(model.adapter_tensors()[k], v) for k, v in sst2_run["adapter_before"].items())


def test_optimizer_holds_exactly_the_trainable_parameters(sst2_run):
    trainer, model = sst2_run["trainer"], sst2_run["model"]
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable == {id(p) for p in model.adapter_tensors().values()}


def test_checkpoints_hold_the_adapter_and_safe_trainer_state_only(sst2_run):
    out = sst2_run["out"]
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [c.name for c in checkpoints] == ["checkpoint-8", "checkpoint-16", "checkpoint-24", "checkpoint-32"]
    for checkpoint in checkpoints:
        names = {p.name for p in checkpoint.iterdir()}
        assert names == {
            "README.md",
            WEIGHTS_NAME,
            CONFIG_NAME,
            "training_args.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "trainer_state.json",
            "optimizer.pt",
            "scheduler.pt",
            "rng_state.pth",
            "training_summary.json",
            "training_curve.png",  # the card's data and figure, with every checkpoint
        }
        # The Trainer's own state files load without unpickling arbitrary objects.
        from transformers.trainer_pt_utils import safe_globals

        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            with safe_globals():
                torch.load(checkpoint / name, weights_only=True)
        adapter = HybridModel.from_pretrained(checkpoint, t5_from_preset("tiny")[0])
        assert set(adapter.adapter_tensors()) == set(sst2_run["model"].adapter_tensors())


def test_save_model_writes_the_best_adapter(sst2_run, tmp_path):
    trainer = sst2_run["trainer"]
    best = Path(trainer.state.best_model_checkpoint)
    trainer.save_model(str(tmp_path / "final"))
    saved = HybridModel.from_pretrained(tmp_path / "final", t5_from_preset("tiny")[0]).adapter_tensors()
    at_best = HybridModel.from_pretrained(best, t5_from_preset("tiny")[0]).adapter_tensors()
    assert all(torch.equal(saved[k], at_best[k]) for k in saved)
    assert not (tmp_path / "final" / "model.safetensors").exists()


def test_each_evaluation_writes_predictions_and_task_metrics(sst2_run):
    out, trainer = sst2_run["out"], sst2_run["trainer"]
    for step in (8, 16, 24, 32):
        metrics = json.loads((out / f"eval_metrics-{step}.json").read_text())
        assert {"eval_accuracy", "eval_invalid_outputs", "eval_loss", "step", "epoch"} <= set(metrics)
        rows = [json.loads(line) for line in (out / f"eval_predictions-{step}.jsonl").read_text().splitlines()]
        assert [r["source"] for r in rows] == list(trainer.eval_dataset["source"])
        assert [r["reference"] for r in rows] == list(trainer.eval_dataset["target"])
        # The metric file agrees with the predictions file it came from.
        recomputed = get_task("sst2").compute_metrics([r["prediction"] for r in rows], trainer.eval_dataset)
        assert metrics["eval_accuracy"] == recomputed["accuracy"]


def test_training_summary_records_curve_evaluations_and_best(sst2_run):
    trainer, out = sst2_run["trainer"], sst2_run["out"]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary == trainer.training_summary.to_dict()
    assert summary["task"] == "sst2" and summary["model"]["mode"] == "hybrid"
    assert summary["model"]["trainable_params"] == sst2_run["model"].num_parameters(trainable_only=True)
    assert summary["hyperparameters"]["learning_rate"] == 1e-2
    assert summary["hyperparameters"]["adapter"]["r"] == 4
    assert [p["step"] for p in summary["training_curve"]] == list(range(2, 33, 2))
    assert [e["step"] for e in summary["evaluations"]] == [8, 16, 24, 32]
    assert summary["best"]["checkpoint"] == Path(trainer.state.best_model_checkpoint).name
    assert summary["final"]["step"] == summary["best"]["step"]


# --- early stopping ------------------------------------------------------------------------
class _FlatTask(Task):
    """A metric that never improves: early stopping must end training."""

    def __init__(self) -> None:
        super().__init__(name="flat_test_task", metric_for_best_model="flat", generation_kwargs={"max_new_tokens": 2})

    def compute_metrics(self, predictions, examples):
        return {"flat": 1.0}


def test_early_stopping_ends_training_when_the_metric_stalls(tmp_path):
    register_task(_FlatTask(), overwrite=True)
    try:
        model, tokenizer = _model()
        rows = _tokenized(_sst2_rows(8, 0), tokenizer)
        args = _args(
            tmp_path,
            task="flat_test_task",
            num_train_epochs=10,
            per_device_train_batch_size=4,
            early_stopping_patience=2,
        )
        trainer = _trainer(model, args, train_dataset=rows, eval_dataset=rows, tokenizer=tokenizer)
        trainer.train()
    finally:
        unregister_task("flat_test_task")
    assert args.metric_for_best_model == "flat"
    # Epoch 1 sets the best; epochs 2 and 3 do not improve; patience 2 stops after epoch 3.
    assert trainer.state.global_step == 6 and trainer.state.epoch == 3.0
    assert sorted(p.name for p in tmp_path.glob("eval_metrics-*.json")) == [
        "eval_metrics-2.json",
        "eval_metrics-4.json",
        "eval_metrics-6.json",
    ]


# --- exact resume --------------------------------------------------------------------------
def _resume_run(out: Path, train, resume: str | None = None):
    model, tokenizer = _model()
    args = _no_eval_args(out, **RESUME_RUN)
    trainer = _trainer(model, args, train_dataset=train, tokenizer=tokenizer)
    trainer.train(resume_from_checkpoint=resume)
    return _snapshot(model.adapter_tensors())


def test_resume_mid_epoch_continues_exactly(tmp_path):
    _, tokenizer = _model()
    rows = datasets.Dataset.from_list(
        [{"input_text": r["dialogue"], "target": r["summary"]} for r in dialogue_summary_pairs(40, 0)]
    )
    train, _ = tokenize_dataset(rows, tokenizer, 64, 24)
    # 5 steps per epoch: step 7 is inside the second epoch, whose batch order must be reproduced.
    straight = _resume_run(tmp_path / "straight", train)
    checkpoint = tmp_path / "straight" / "checkpoint-7"
    resumed = _resume_run(tmp_path / "resumed", train, resume=str(checkpoint))
    assert set(straight) == set(resumed)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    at_7 = HybridModel.from_pretrained(checkpoint, t5_from_preset("tiny")[0]).adapter_tensors()
    assert not all(torch.equal(at_7[k], straight[k]) for k in straight)  # steps 8-9 did change something


def test_resume_refuses_a_folder_that_is_not_a_hybrid_checkpoint(tmp_path):
    model, tokenizer = _model()
    trainer = HybridTrainer(model, _no_eval_args(tmp_path / "out"), processing_class=tokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no hybrid_config.json"):
        trainer._load_from_checkpoint(str(tmp_path / "empty"))


# --- every mode ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["lora", "prompt", "full"])
def test_each_trainable_mode_trains_and_restores(mode, tmp_path):
    model, tokenizer = _model(mode)
    base_before = _base_weights(model)
    adapter_before = _snapshot(model.adapter_tensors())
    train = _tokenized(_sst2_rows(8, 0), tokenizer)
    args = _no_eval_args(
        tmp_path, max_steps=2, per_device_train_batch_size=4, save_strategy="steps", save_steps=2, learning_rate=1e-2
    )
    _trainer(model, args, train_dataset=train, tokenizer=tokenizer).train()
    base_after = _base_weights(model)
    base_changed = any(not torch.equal(base_after[k], v) for k, v in base_before.items())
    assert base_changed == (mode == "full")
    assert all(not torch.equal(model.adapter_tensors()[k], v) for k, v in adapter_before.items())
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists() == (mode == "full")
    # A fresh model restored from the checkpoint equals the trained one, base included.
    fresh, _ = _model(mode)
    HybridTrainer(fresh, _no_eval_args(tmp_path / "fresh"), processing_class=tokenizer)._load_from_checkpoint(
        str(checkpoint)
    )
    restored = fresh.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())


def test_mode_none_evaluates_but_refuses_to_train(tmp_path):
    model, tokenizer = _model("none")
    rows = _tokenized(_sst2_rows(8, 0), tokenizer)
    trainer = _trainer(model, _args(tmp_path, task="sst2"), train_dataset=rows, eval_dataset=rows, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_accuracy", "eval_invalid_outputs", "eval_loss"} <= set(metrics)
    assert (tmp_path / "eval_predictions-0.jsonl").is_file()


def test_task_metrics_need_the_task_rows(tmp_path):
    model, tokenizer = _model()
    tokens, _ = tokenize_dataset(get_task("sst2").format_dataset(_sst2_rows(4, 0), False), tokenizer, 64, 8)
    trainer = _trainer(model, _args(tmp_path, task="sst2"), eval_dataset=tokens, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="pass eval_examples=<the task rows>"):
        trainer.evaluate()
    trainer.eval_examples = _sst2_rows(4, 0)
    assert "eval_accuracy" in trainer.evaluate()


# --- speed options ---------------------------------------------------------------------------
def test_merged_evaluation_scores_like_unmerged_and_restores_the_base(tmp_path):
    model, tokenizer = _model("hybrid", seed=3, **SCALED_LORA)
    with torch.no_grad():
        for p in model.adapter_tensors().values():
            p.add_(torch.randn_like(p) * 0.3)
    rows = _tokenized(_sst2_rows(12, 5), tokenizer)
    parameters = {n: p for n, p in model.named_parameters()}
    before = _snapshot(dict(model.state_dict()))
    results = {}
    for merged in (True, False):
        trainer = _trainer(
            model,
            _args(tmp_path / str(merged), merged_eval=merged),
            task="sst2",
            eval_dataset=rows,
            tokenizer=tokenizer,
        )
        results[merged] = trainer.evaluate()
    assert results[True]["eval_accuracy"] == results[False]["eval_accuracy"]
    assert abs(results[True]["eval_loss"] - results[False]["eval_loss"]) < 1e-5
    # The very same parameter objects, bit-identical, LoRA layers back in place.
    assert {n: p for n, p in model.named_parameters()}.keys() == parameters.keys()
    assert all(p is parameters[n] for n, p in model.named_parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bf16_frozen_base_needs_bf16(tmp_path):
    model, tokenizer = _model("hybrid")
    with pytest.raises(ValueError, match="bf16_frozen_base=True needs bf16=True"):
        HybridTrainer(model, _no_eval_args(tmp_path, bf16_frozen_base=True), processing_class=tokenizer)


@pytest.mark.parametrize("plugin, name", [("is_fsdp_enabled", "FSDP"), ("is_deepspeed_enabled", "DeepSpeed")])
def test_sharded_launch_is_refused_before_training(plugin, name, tmp_path, monkeypatch):
    """An accelerate launch with an FSDP or DeepSpeed plugin fails at construction, naming the
    plugin and the data-parallel config to use instead (FSDP needs accelerator devices, so the
    launcher's flag is set here the way accelerate would set it)."""
    import transformers

    original = transformers.Trainer.create_accelerator_and_postprocess

    def with_plugin(self):
        original(self)
        setattr(self, plugin, True)

    monkeypatch.setattr(transformers.Trainer, "create_accelerator_and_postprocess", with_plugin)
    model, tokenizer = _model()
    before = {k: v.clone() for k, v in model.adapter_tensors().items()}
    with pytest.raises(ValueError, match=rf"does not support {name}.*multi_gpu\.yaml"):
        HybridTrainer(model, _no_eval_args(tmp_path / "out"), processing_class=tokenizer)
    assert all(torch.equal(before[k], v) for k, v in model.adapter_tensors().items())


@pytest.mark.parametrize("flag", ["torch_compile", "compile_stacks"])
def test_compiled_training_saves_the_adapter_it_trained(flag, tmp_path):
    """Transformers' own ``torch_compile`` (the whole forward) and ``compile_stacks`` (the two
    stacks, so generation is compiled too) both train the adapter, leave the base alone, and
    write checkpoints under the plain parameter names (dynamo tracing only, for speed)."""
    model, tokenizer = _model()
    base_before, adapter_before = _base_weights(model), _snapshot(model.adapter_tensors())
    rows = _tokenized(_sst2_rows(8, 0), tokenizer)
    args = _args(
        tmp_path,
        task="sst2",
        max_steps=2,
        per_device_train_batch_size=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        learning_rate=1e-2,
        **{flag: True},
    )
    if flag == "torch_compile":
        args.torch_compile_backend = "eager"
    trainer = _trainer(model, args, train_dataset=rows, eval_dataset=rows, tokenizer=tokenizer)
    if flag == "compile_stacks":  # recompile with dynamo only: inductor would take minutes here
        compile_model(model, backend="eager")
    trainer.train()
    assert any("eval_accuracy" in entry for entry in trainer.state.log_history)  # generation ran
    assert all(torch.equal(v, base_before[k]) for k, v in _base_weights(model).items())
    trained = model.adapter_tensors()
    assert all(not torch.equal(trained[k], v) for k, v in adapter_before.items())
    saved = HybridModel.from_pretrained(tmp_path / "checkpoint-2", t5_from_preset("tiny")[0]).adapter_tensors()
    assert set(saved) == set(trained) and all(torch.equal(saved[k], trained[k]) for k in saved)
