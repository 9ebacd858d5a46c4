"""An adapter folder describes its own inference: ``peft-hybrid evaluate`` on a run's validation file
reproduces the run's own final predictions line for line, with no formatting flags given.

Each run uses a non-default input prefix and ``--max_source_length 64``; neither is the default
``evaluate`` would fall back to (no prefix, 512 tokens), so a folder that did not record them
scores differently (the issue measured 9 of 40 differing lines).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_model
from peft_hybrid import HybridConfig
from peft_hybrid.cli import main as cli
from peft_hybrid.config import InferenceSettings
from peft_hybrid.inference import generation_settings, model_inputs, source_length
from peft_hybrid.offline.synthetic import dialogue_summary_pairs, sentiment_sentences, write_samsum_csv, write_sst2_tsv
from test_malformed_input import QUICK

N_VALIDATION = 40
# The quick tiny-model run of the malformed-input tests, evaluating and saving every 2 steps.
RUN = [
    *QUICK,
    *("--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps"),
    *("--save_steps", "2", "--per_device_train_batch_size", "8", "--learning_rate", "0.01"),
    *("--num_virtual_tokens", "4", "--max_source_length", "64"),
]


def _samsum(folder: Path) -> list[str]:
    # Dialogues repeated past 64 tokens, so truncation changes what the encoder sees.
    records = [dict(r, dialogue=(r["dialogue"] + "\r\n") * 3) for r in dialogue_summary_pairs(N_VALIDATION + 16, 1)]
    write_samsum_csv(folder / "train.csv", records[N_VALIDATION:])
    write_samsum_csv(folder / "dev.csv", records[:N_VALIDATION])
    return ["--train_file", str(folder / "train.csv"), "--validation_file", str(folder / "dev.csv")]


def _sst2(folder: Path) -> list[str]:
    rows = sentiment_sentences(N_VALIDATION + 16, 2)
    write_sst2_tsv(folder / "train.tsv", rows[N_VALIDATION:])
    write_sst2_tsv(folder / "dev.tsv", rows[:N_VALIDATION])
    return ["--train_file", str(folder / "train.tsv"), "--validation_file", str(folder / "dev.tsv")]


def _wikisql(folder: Path) -> list[str]:
    header = ["Player", "Team", "Position", "Goals"]
    types = ["text", "text", "text", "real"]
    table = {"id": "1-1", "header": header, "types": types, "rows": [["Ann", "Reds", "GK", 3]]}
    (folder / "tables.jsonl").write_text(json.dumps(table) + "\n", encoding="utf-8")
    names = [r["dialogue"].split(":")[0] for r in dialogue_summary_pairs(N_VALIDATION + 16, 3)]
    lines = []
    for i, name in enumerate(names):
        question = f"Which {header[i % 3].lower()} does {name} play for, with more than {i} goals in the season?"
        sql = {"sel": i % 3, "agg": 0, "conds": [[0, 0, name], [3, 1, str(i)]]}
        lines.append(json.dumps({"question": question, "table_id": "1-1", "sql": sql}))
    (folder / "train.jsonl").write_text("\n".join(lines[N_VALIDATION:]) + "\n", encoding="utf-8")
    (folder / "dev.jsonl").write_text("\n".join(lines[:N_VALIDATION]) + "\n", encoding="utf-8")
    files = ["--train_file", str(folder / "train.jsonl"), "--validation_file", str(folder / "dev.jsonl")]
    return [*files, "--tables_file", str(folder / "tables.jsonl")]


TASKS = {"samsum": (_samsum, "dialogue: "), "sst2": (_sst2, "review: "), "wikisql": (_wikisql, "sql: ")}


def _final_predictions(run: Path) -> list[dict]:
    step = max(int(p.stem.split("-")[-1]) for p in run.glob("eval_predictions-*.jsonl"))
    return [json.loads(line) for line in (run / f"eval_predictions-{step}.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_evaluate_reproduces_the_runs_final_predictions(task, tmp_path, capsys):
    write, prefix = TASKS[task]
    data = write(tmp_path)
    run = tmp_path / "run"
    argv = ["train", "--task", task, *RUN, "--task_prefix", prefix, *data, "--output_dir", str(run)]
    assert cli(argv) == 0, capsys.readouterr().err[-3000:]
    config = HybridConfig.load(run)
    assert config.inference.task_prefix == prefix and config.inference.max_source_length == 64
    assert HybridConfig.load(run / "checkpoint-2").inference == config.inference  # every save carries it
    expected = _final_predictions(run)
    assert len(expected) == N_VALIDATION

    validation = data[data.index("--validation_file") + 1]
    tables = data[data.index("--tables_file") :][:2] if "--tables_file" in data else []
    out = tmp_path / "eval"
    argv = ["evaluate", "--adapter", str(run), "--data_file", validation, *tables, "--out", str(out), "--no_progress"]
    assert cli(argv) == 0, capsys.readouterr().err[-3000:]
    got = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    differing = [i for i, (a, b) in enumerate(zip(got, expected)) if a["prediction"] != b["prediction"]]
    assert not differing, f"{len(differing)} of {len(expected)} predictions differ, first at line {differing[0] + 1}"
    assert got == expected


# --- the saved settings apply by default; a flag given overrides, a flag not given does not ------
SAVED = InferenceSettings(
    task_prefix="review: ", max_source_length=6, generation={"max_new_tokens": 2, "num_beams": 1}
)
SENTENCES = [r["sentence"] for r in sentiment_sentences(5, 7)]


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    folder = tmp_path_factory.mktemp("described")
    model, tokenizer = tiny_model("hybrid", task="sst2", inference=SAVED)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "in.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return folder, model, tokenizer


def _direct(model, tokenizer, texts, max_length, **generation):
    encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    with torch.no_grad():
        ids = model.generate(**encoded, **generation)
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


PREDICT_CASES = {
    "no flags: the saved settings": ([], ["review: "], 6, {"max_new_tokens": 2, "num_beams": 1}),
    "--task_prefix ''": (["--task_prefix", ""], [""], 6, {"max_new_tokens": 2, "num_beams": 1}),
    "--use_task_tags": (["--use_task_tags"], ["sst2 sentence: "], 6, {"max_new_tokens": 2, "num_beams": 1}),
    "--max_source_length 64": (["--max_source_length", "64"], ["review: "], 64, {"max_new_tokens": 2, "num_beams": 1}),
    "--max_new_tokens 5 --num_beams 2": (
        ["--max_new_tokens", "5", "--num_beams", "2"],
        ["review: "],
        6,
        {"max_new_tokens": 5, "num_beams": 2},
    ),
}


@pytest.mark.parametrize("case", PREDICT_CASES)
def test_predict_uses_the_saved_settings_unless_a_flag_says_otherwise(described, capsys, case):
    folder, model, tokenizer = described
    flags, (prefix,), max_length, generation = PREDICT_CASES[case]
    argv = ["predict", "--adapter", str(folder), "--input", str(folder / "in.txt"), "--no_progress", *flags]
    assert cli(argv) == 0
    expected = _direct(model, tokenizer, [prefix + s for s in SENTENCES], max_length, **generation)
    assert capsys.readouterr().out.splitlines() == expected


def test_the_settings_are_recorded_by_the_run_not_set_on_the_command_line():
    from peft_hybrid.training.recipe import AdapterArguments, parse_args

    assert "inference" not in {f.name for f in dataclasses.fields(AdapterArguments)}
    _, config, _ = parse_args(["--model_preset", "tiny", "--output_dir", "o", "--task_prefix", "q: "], task="sst2")
    assert config.inference == InferenceSettings(task_prefix="q: ")  # the trainer adds lengths and generation


def test_an_adapter_without_saved_settings_keeps_the_old_defaults():
    config = HybridConfig(task="sst2")
    assert model_inputs(config, ["a film"]) == ["a film"]  # PEFT modes: no tag
    assert model_inputs(HybridConfig(mode="full", task="sst2"), ["a film"]) == ["sst2 sentence: a film"]
    assert source_length(config) == 512 and generation_settings(config) == {"max_new_tokens": 3, "num_beams": 1}
    assert generation_settings(HybridConfig()) == {"max_new_tokens": 64}


def test_another_task_than_the_adapters_takes_that_tasks_generation_settings():
    config = HybridConfig(task="sst2", inference=SAVED)
    assert generation_settings(config, "samsum") == {"max_new_tokens": 128, "num_beams": 1}
    assert generation_settings(config, "sst2") == SAVED.generation
    assert generation_settings(config, max_length=9) == {"max_length": 9, "num_beams": 1}  # one cap
