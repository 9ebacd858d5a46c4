"""A Hub token given to ``peft-hybrid train`` never reaches a file, a log record, stdout or stderr.

transformers' ``TrainingArguments.to_dict`` replaces every ``*_token`` field with a placeholder;
these tests check that every file the run writes (checkpoints included) goes through it, and that
a failing run does not echo the token either.
"""

from __future__ import annotations

import json
import logging

import pytest

from helpers import FIXED_STEPS, quick_run_args
from peft_hybrid.cli import main as cli
from peft_hybrid.offline.synthetic import dialogue_summary_pairs, write_samsum_csv

# Shaped like a real user access token, so any code that logs "what looks like a token" is caught too.
TOKEN = "hf_" + "TkN9xQ2" * 5
RUN = quick_run_args(
    "train",
    "--task",
    "samsum",
    max_steps=2,
    warmup_steps=0,
    logging_steps=1,
    save_strategy="steps",
    save_steps=1,
    eval_strategy="steps",
    eval_steps=2,
    **FIXED_STEPS,
    per_device_train_batch_size=4,
    per_device_eval_batch_size=2,
    max_source_length=48,
    max_target_length=16,
    hub_token=TOKEN,
)


@pytest.mark.slow
def test_hub_token_is_in_no_file_log_or_output_of_a_training_run(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    argv = [
        *RUN,
        "--train_file",
        str(write_samsum_csv(tmp_path / "train.csv", dialogue_summary_pairs(8, 0))),
        "--validation_file",
        str(write_samsum_csv(tmp_path / "val.csv", dialogue_summary_pairs(2, 1))),
        "--output_dir",
        str(out),
    ]
    with caplog.at_level(logging.DEBUG):
        assert cli(argv) == 0
    printed = capsys.readouterr()

    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    expected = {
        "training_args.json",
        "README.md",
        "results.json",
        "training_summary.json",
        "checkpoint-2/trainer_state.json",
        "checkpoint-2/training_args.json",
        "checkpoint-2/README.md",
    }
    assert expected <= set(written), sorted(written)
    leaks = [name for name, data in written.items() if TOKEN.encode() in data]
    assert leaks == []
    assert json.loads(written["training_args.json"])["hub_token"] == "<HUB_TOKEN>"
    assert TOKEN not in printed.out and TOKEN not in printed.err
    assert TOKEN not in caplog.text and all(TOKEN not in str(r.args) for r in caplog.records)


def test_hub_token_is_not_echoed_when_the_run_fails(tmp_path, capsys, caplog):
    argv = [
        *RUN,
        "--train_file",
        str(tmp_path / "missing.csv"),
        "--validation_file",
        str(tmp_path / "missing.csv"),
        "--output_dir",
        str(tmp_path / "run"),
    ]
    with caplog.at_level(logging.DEBUG):
        assert cli(argv) == 2
    printed = capsys.readouterr()
    assert "missing.csv" in printed.err and TOKEN not in printed.err + printed.out and TOKEN not in caplog.text
