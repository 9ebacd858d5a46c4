"""Crash safety: a training run SIGKILLed at any step resumes to the same adapter, tensor for tensor,
and a checkpoint folder left half-written by the kill is never loaded as if it were whole."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import threading
import time
from pathlib import Path

import datasets
import pytest
import torch
from transformers.trainer_utils import get_last_checkpoint

from helpers import FAST_TRAINING
from kill_resume_driver import KillResumeRun
from peft_hybrid import AdapterLoadError, HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.offline.synthetic import dialogue_summary_pairs
from peft_hybrid.serialization import WEIGHTS_NAME
from peft_hybrid.training.checkpoints import latest_complete_checkpoint, resolve_resume_checkpoint
from peft_hybrid.training.data import Seq2SeqCollator, tokenize_dataset
from peft_hybrid.training.trainer import HybridTrainer, HybridTrainingArguments


# --- real processes, killed at random steps ------------------------------------------------
@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_gives_the_uninterrupted_adapter(tmp_path):
    seed = int(os.environ.get("KILL_RESUME_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    run = KillResumeRun(tmp_path)
    # Two kills in one run, the second in a resumed process: steps after checkpoint-4, across
    # both epochs; a random delay lets a kill land while a checkpoint is being written.
    kill_points = sorted(rng.sample(range(run.save_steps + 1, run.max_steps), 2))
    delays = [rng.uniform(0.0, 0.3) for _ in kill_points]
    where = f"(KILL_RESUME_SEED={seed}, kill points {kill_points})"

    reference: list = []
    thread = threading.Thread(target=lambda: reference.append(run.train("reference")))
    thread.start()
    try:
        for i, (step, delay) in enumerate(zip(kill_points, delays)):
            killed = run.train("killed", resume=i > 0, kill_at=step, delay=delay)
            assert killed.killed and killed.returncode == -9, f"{killed} {where}"
            # Some checkpoint exists to resume from (save_total_limit may have rotated checkpoint-4 away).
            assert latest_complete_checkpoint(run.output_dir("killed")) is not None, where
        final = run.train("killed", resume=True)
    finally:
        thread.join()
    reference[0].check_finished()
    final.check_finished()
    assert final.steps[-1] == run.max_steps and final.steps[0] > run.save_steps, where

    assert run.differences("reference", "killed") == [], where
    # The evaluation after the last step saw the same adapter, so it scored the same.
    ref_metrics = json.loads((run.output_dir("reference") / "results.json").read_text())["eval"]
    got_metrics = json.loads((run.output_dir("killed") / "results.json").read_text())["eval"]
    assert got_metrics["eval_loss"] == ref_metrics["eval_loss"], where


# --- half-written checkpoints, made by hand ------------------------------------------------
STEPS, SAVE_EVERY = 6, 2


def _trainer(out: Path) -> tuple[HybridTrainer, HybridModel]:
    base, tokenizer = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(mode="hybrid", num_virtual_tokens=4), tokenizer=tokenizer)
    rows = datasets.Dataset.from_list(
        [{"input_text": r["dialogue"], "target": r["summary"]} for r in dialogue_summary_pairs(24, 0)]
    )
    train, _ = tokenize_dataset(rows, tokenizer, 48, 16)
    args = HybridTrainingArguments(
        output_dir=str(out),
        **FAST_TRAINING,
        eval_strategy="no",
        load_best_model_at_end=False,
        early_stopping_patience=None,
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=SAVE_EVERY,
        save_total_limit=None,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=1,
    )
    trainer = HybridTrainer(
        model, args, train_dataset=train, processing_class=tokenizer, data_collator=Seq2SeqCollator(tokenizer)
    )
    return trainer, model


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted run with a checkpoint every 2 steps, and its final adapter."""
    out = tmp_path_factory.mktemp("straight") / "run"
    trainer, model = _trainer(out)
    trainer.train()
    return out, {k: v.detach().clone() for k, v in model.adapter_tensors().items()}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# How a kill during the save of checkpoint-6 can leave it (files are written in this order:
# adapter weights, hybrid_config.json, tokenizer, optimizer, scheduler, RNG, trainer_state.json).
PARTIAL = {
    "killed before the adapter config": (lambda f: (f / "hybrid_config.json").unlink(), "holds no hybrid_config.json"),
    "weights changed after the config": (
        lambda f: _truncate(f / WEIGHTS_NAME),
        "does not match the hash",
    ),
    "killed before the trainer state": (lambda f: (f / "trainer_state.json").unlink(), "holds no trainer_state.json"),
    "killed while writing the trainer state": (lambda f: _truncate(f / "trainer_state.json"), "is not valid JSON"),
    "an empty folder (killed right after mkdir)": (
        lambda f: [p.unlink() for p in f.iterdir()],
        "holds no hybrid_config.json",
    ),
    "a trainer state without a step": (lambda f: (f / "trainer_state.json").write_text("{}"), "holds no global_step"),
    "optimizer state damaged on disk": (lambda f: _truncate(f / "optimizer.pt"), "optimizer.pt is damaged"),
    "RNG state damaged on disk": (lambda f: _truncate(f / "rng_state.pth"), "rng_state.pth is damaged"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", PARTIAL)
def test_a_half_written_checkpoint_is_skipped_for_the_previous_complete_one(straight_run, tmp_path, caplog, case):
    source, _ = straight_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    damage, words = PARTIAL[case]
    damage(out / "checkpoint-6")

    assert get_last_checkpoint(str(out)).endswith("checkpoint-6")  # what transformers alone would resume from
    with caplog.at_level(logging.WARNING, logger="peft_hybrid.training.checkpoints"):
        assert latest_complete_checkpoint(out) == out / "checkpoint-4"
    assert any("Skipping checkpoint-6" in r.getMessage() and words in r.getMessage() for r in caplog.records)
    # Asked for by name, the damaged folder is refused with the reason and the way out.
    with pytest.raises(AdapterLoadError) as err:
        resolve_resume_checkpoint(str(out / "checkpoint-6"), out)
    assert words in str(err.value) and "checkpoint-4" in str(err.value) and "latest" in str(err.value)


@pytest.mark.slow
def test_resume_true_skips_a_half_written_checkpoint_and_ends_on_the_same_adapter(straight_run, tmp_path):
    source, expected = straight_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    shutil.rmtree(out / "checkpoint-6")  # a run killed at step 6, while writing its checkpoint
    (out / "checkpoint-6").mkdir()
    (out / "checkpoint-6" / WEIGHTS_NAME).write_bytes(b"\x00" * 10)  # the kill came mid-write

    trainer, model = _trainer(out)
    trainer.train(resume_from_checkpoint="latest")  # what --resume_from_checkpoint latest passes
    got = model.adapter_tensors()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert resolve_resume_checkpoint(True, out) == str(out / "checkpoint-6")  # rewritten whole


def test_nothing_complete_to_resume_from_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="holds no checkpoint-<step> folders; nothing to resume from"):
        resolve_resume_checkpoint(True, tmp_path)
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(ValueError, match=r"only incomplete ones \(checkpoint-2\)"):
        resolve_resume_checkpoint("latest", tmp_path)
    assert resolve_resume_checkpoint(None, tmp_path) is None and resolve_resume_checkpoint(False, tmp_path) is None
