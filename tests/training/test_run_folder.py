"""A run folder is never silently destroyed or shared: manifest, overwrite flag, lock, resume checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXED_STEPS, quick_run_args, samsum_csv, tiny_model
from peft_hybrid import AdapterLoadError, HybridConfig
from peft_hybrid.cli import main as cli
from peft_hybrid.offline.synthetic import sentiment_sentences, write_sst2_tsv
from peft_hybrid.training.run_folder import (
    MANIFEST_NAME,
    RunFolderBusy,
    claim_run_folder,
    first_difference,
    read_manifest,
    run_manifest,
)
from peft_hybrid.training.trainer import HybridTrainer, HybridTrainingArguments

SRC = Path(__file__).resolve().parents[2] / "src"
QUICK = quick_run_args(
    disable_tqdm=True,
    eval_strategy="no",
    **FIXED_STEPS,
    per_device_train_batch_size=4,
    warmup_steps=0,
    max_source_length=64,
    max_target_length=16,
    num_virtual_tokens=4,
)


def _train(out: Path, train_file: Path, *extra: str, task: str = "samsum", steps: int = 1) -> list[str]:
    return [
        *("train", "--task", task, *QUICK, "--max_steps", str(steps), "--save_strategy", "steps"),
        *("--save_steps", "1", "--train_file", str(train_file), "--output_dir", str(out), *extra),
    ]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err[-2000:]
    return err.splitlines()[-1] if err else ""


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, Path]:
    """One finished tiny samsum run: (its output_dir, its training file)."""
    tmp = tmp_path_factory.mktemp("first_run")
    data = samsum_csv(tmp / "train.csv")
    assert cli(_train(tmp / "out", data)) == 0
    return tmp / "out", data


# --- the manifest ---------------------------------------------------------------------------
def test_manifest_names_the_first_difference():
    ours = run_manifest(HybridConfig(task="sst2", r=8), {"train": {"sha256": "aa"}})
    theirs = run_manifest(HybridConfig(task="sst2", r=4), {"train": {"sha256": "bb"}})
    assert first_difference(ours, ours) is None
    assert first_difference(ours, theirs) == "adapter.r: 8 in this run, 4 there"
    theirs["task"] = "samsum"
    assert first_difference(ours, theirs) == "task: 'sst2' in this run, 'samsum' there"
    assert first_difference(ours, {**ours, "data": {"train": {"sha256": "bb"}}}) == (
        "data.train.sha256: 'aa' in this run, 'bb' there"
    )


def test_the_runs_own_folder_is_reused_and_records_the_run(first_run, capsys):
    out, data = first_run
    manifest = read_manifest(out)
    assert manifest["task"] == "samsum"
    assert manifest["base"] == {"model": "preset:tiny", "revision": None, "quantization": None}
    assert manifest["data"]["train"] == {"name": "train.csv", "bytes": data.stat().st_size, "sha256": _sha(data)}
    assert manifest["adapter"]["num_virtual_tokens"] == 4 and manifest["adapter"]["seed"] == 42
    # The same run again, and resuming it, are this run's own.
    assert cli(_train(out, data, "--resume_from_checkpoint", "latest", steps=2)) == 0
    assert (out / "checkpoint-2").is_dir()


# --- another run's folder -------------------------------------------------------------------
def test_a_folder_holding_another_run_is_refused_untouched_then_overwritten_on_request(tmp_path, capsys):
    data = samsum_csv(tmp_path / "train.csv")
    out = tmp_path / "out"
    assert cli(_train(out, data)) == 0
    before = {p.name: _sha(p) for p in out.rglob("*") if p.is_file()}
    assert cli(_train(out, data, "--r", "8")) == 2
    message = _last_error(capsys)
    assert f"output_dir {out}: it holds another run (adapter.r: 8 in this run, 4 there)" in message
    assert "adapter_model.safetensors" in message and "checkpoint-1" in message
    assert "--overwrite_output_dir true" in message
    assert {p.name: _sha(p) for p in out.rglob("*") if p.is_file()} == before
    assert cli(_train(out, data, "--r", "8", "--overwrite_output_dir", "true")) == 0
    assert read_manifest(out)["adapter"]["r"] == 8


def test_a_non_empty_folder_without_a_manifest_is_refused(tmp_path, capsys):
    data = samsum_csv(tmp_path / "train.csv")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine\n")
    assert cli(_train(tmp_path / "out", data)) == 2
    message = _last_error(capsys)
    assert "it is not empty and has no run manifest" in message and "it holds notes.txt" in message
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine\n"
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


# --- two processes --------------------------------------------------------------------------
@pytest.mark.slow  # the child process imports torch and transformers: about 10 s
def test_a_second_process_is_refused_naming_the_lock_holder(tmp_path):
    data = samsum_csv(tmp_path / "train.csv")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    with claim_run_folder(out, run_manifest(HybridConfig(task="samsum"), {})):
        second = subprocess.run(
            [sys.executable, "-m", "peft_hybrid.cli", *_train(out, data)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        with pytest.raises(RunFolderBusy) as busy:  # this process, through another open file, too
            with claim_run_folder(out, {}):
                pass
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"is in use by another training run (process {os.getpid()}" in second.stderr
    assert "Traceback" not in second.stderr and busy.value.pid == os.getpid()
    with claim_run_folder(out, run_manifest(HybridConfig(task="samsum"), {})):  # released on exit
        pass


# --- resuming another run's checkpoint ------------------------------------------------------
@pytest.mark.parametrize(
    "change, difference",
    [
        ("task", "task: 'sst2' in this run, 'samsum' there"),
        ("adapter", "adapter.lora_alpha: 8.0 in this run, 4 there"),
        ("base", "base.model: 'preset:flan-t5-small' in this run, 'preset:tiny' there"),
        ("data", "data.train."),
    ],
)
def test_resuming_another_runs_checkpoint_is_refused_naming_the_difference(
    first_run, tmp_path, capsys, change, difference
):
    out, data = first_run
    checkpoint = out / "checkpoint-1"
    args = _train(tmp_path / "out", data, "--resume_from_checkpoint", str(checkpoint), steps=2)
    if change == "task":
        args = _train(
            tmp_path / "out",
            write_sst2_tsv(tmp_path / "t.tsv", sentiment_sentences(4, 0)),
            "--resume_from_checkpoint",
            str(checkpoint),
        )
        args[args.index("samsum")] = "sst2"
    elif change == "adapter":
        args += ["--lora_alpha", "8"]
    elif change == "base":
        args[args.index("tiny")] = "flan-t5-small"
    else:
        other = samsum_csv(tmp_path / "train.csv", seed=1)
        args[args.index(str(data))] = str(other)
    assert cli(args) == 2
    message = _last_error(capsys)
    assert f"resume_from_checkpoint={checkpoint}: it was saved by another run ({difference}" in message


def test_the_trainer_refuses_a_checkpoint_of_another_adapter_config(tmp_path):
    saved, _ = tiny_model("hybrid", r=4)
    saved.save_pretrained(tmp_path / "checkpoint-1")
    model, tokenizer = tiny_model("hybrid", r=2)
    args = HybridTrainingArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        eval_strategy="no",
        load_best_model_at_end=False,
        early_stopping_patience=None,
    )
    trainer = HybridTrainer(model, args, processing_class=tokenizer)
    with pytest.raises(AdapterLoadError, match=r"saved by another run \(adapter\.r: 2 in this run, 4 there\)"):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))


def test_manifest_is_plain_json_without_machine_paths(first_run):
    out, _ = first_run
    text = (out / MANIFEST_NAME).read_text()
    assert str(out.parent) not in text and json.loads(text)["format"] == 1


def test_a_damaged_manifest_is_reported_as_damaged_not_missing(tmp_path):
    from peft_hybrid.training.run_folder import RunFolderError

    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    (tmp_path / MANIFEST_NAME).write_text('{"task": "sst2", ')
    manifest = run_manifest(HybridConfig(task="sst2"), {})
    with pytest.raises(RunFolderError, match=r"run_manifest.json is damaged") as err:
        with claim_run_folder(tmp_path, manifest):
            pass
    assert "has no run manifest" not in str(err.value)
    assert (tmp_path / MANIFEST_NAME).read_text() == '{"task": "sst2", '


def test_a_lock_file_path_that_is_a_folder_is_named(tmp_path):
    from peft_hybrid.training.run_folder import LOCK_NAME, RunFolderError

    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(RunFolderError, match=r"\.peft_hybrid\.lock is a folder"):
        with claim_run_folder(tmp_path, run_manifest(HybridConfig(task="sst2"), {})):
            pass
    assert not (tmp_path / MANIFEST_NAME).exists()
