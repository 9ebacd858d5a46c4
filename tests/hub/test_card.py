"""Model cards: the whole rendered card against a snapshot, the model-index of every task read
back by huggingface_hub, and the images beside the card."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.config import InferenceSettings
from peft_hybrid.hub.card import CURVE_IMAGE, CardData, framework_versions, render_card, write_card
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.tasks import get_task

SNAPSHOT = Path(__file__).parent / "snapshots" / "adapter_card_samsum.md"
INFERENCE = InferenceSettings(task_prefix="dialogue: ", max_source_length=64, generation={"max_new_tokens": 128})
# The enums are what TrainingArguments hold; the card must print their plain values.
SUMMARY = {
    "task": "samsum",
    "hyperparameters": {
        "learning_rate": 0.001,
        "adam_epsilon": 1e-08,
        "per_device_train_batch_size": 16,
        "lr_scheduler_type": SchedulerType.COSINE,
        "optim": OptimizerNames.ADAMW_TORCH,
        "warmup_steps": 500,
        "seed": 42,
        "task": "samsum",
    },
    "training_curve": [{"step": 1, "epoch": 0.5, "loss": 9.5}, {"step": 2, "epoch": 1.0, "loss": 8.25}],
    "evaluations": [
        {
            "step": 2,
            "epoch": 1.0,
            "eval_loss": 7.0,
            "eval_rouge1": 41.25,
            "eval_rouge2": 17.5,
            "eval_rougeL": 33.125,
            "eval_rougeLsum": 35.0,
            "eval_runtime": 1.5,
            "eval_samples_per_second": 9.0,
        },
        {
            "step": 4,
            "epoch": 2.0,
            "eval_loss": 6.5,
            "eval_rouge1": 50.4,
            "eval_rouge2": 25.4,
            "eval_rougeL": 41.8,
            "eval_rougeLsum": 45.123456789,
            "eval_runtime": 1.4,
            "eval_samples_per_second": 9.5,
        },
    ],
}
ABLATION = [
    {"mode": m, "metrics": {"rouge1": v}}
    for m, v in (("none", 48.5), ("prompt", 48.5), ("lora", 50.2), ("hybrid", 50.4))
]
RESULTS = {
    "samsum": {"rouge1": 50.4, "rouge2": 25.4, "rougeL": 41.8, "rougeLsum": 45.1},
    "wikisql": {"logical_form_accuracy": 44.4, "execution_accuracy": 51.25, "exact_match": 40.0},
    "sst2": {"accuracy": 95.0},
}


def _model(task: str | None = "samsum") -> HybridModel:
    base, tokenizer = t5_from_preset("tiny")
    config = HybridConfig(task=task, num_virtual_tokens=4, base_model_name_or_path="google/flan-t5-base")
    return HybridModel(base, config, tokenizer=tokenizer)


def _normalised(text: str) -> str:
    for name, version in framework_versions().items():
        text = re.sub(rf"^- {re.escape(name)} {re.escape(version)}$", f"- {name} X.Y.Z", text, flags=re.M)
    return text


def test_whole_card_matches_the_snapshot():
    model = _model()
    model.hybrid_config.inference = INFERENCE
    data = CardData.from_model(model, SUMMARY, ablation=ABLATION, repo_id="alice/flan-t5-samsum-hybrid")
    data.curve_image = CURVE_IMAGE
    text = _normalised(render_card(data))
    if os.environ.get("PEFT_HYBRID_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(text, encoding="utf-8")
    assert text == SNAPSHOT.read_text(encoding="utf-8")
    assert "| lr_scheduler_type | cosine |" in text and "| optim | adamw_torch |" in text
    assert "SchedulerType" not in text and "OptimizerNames" not in text
    assert ModelCard(text).data.pipeline_tag == "text-generation"
    assert '| input prefix | "dialogue: " |' in text and "| max source length | 64 |" in text


@pytest.mark.parametrize(
    "mode, settings, shown",
    [
        ("hybrid", InferenceSettings(), "| input prefix | none |"),
        ("full", InferenceSettings(), "| input prefix | the task tag |"),
        ("hybrid", InferenceSettings(use_task_tags=True), "| input prefix | the task tag |"),
        ("hybrid", None, None),
    ],
)
def test_the_card_shows_the_saved_inference_settings_not_as_adapter_settings(mode, settings, shown):
    model = _model()
    model.hybrid_config.mode, model.hybrid_config.inference = mode, settings
    text = render_card(CardData.from_model(model, SUMMARY))
    assert ("## Inference settings" in text) == (shown is not None) and (shown is None or shown in text)
    assert "| inference |" not in text  # not a row of the adapter's settings


@pytest.mark.parametrize("task", ["samsum", "wikisql", "sst2"])
def test_model_index_holds_every_metric_of_the_task_and_parses_back(task):
    results = RESULTS[task]
    card = ModelCard(render_card(CardData.from_model(_model(task), results=results, repo_id=f"me/{task}")))
    meta = get_task(task).card_metadata
    assert [(r.metric_name, r.metric_value) for r in card.data.eval_results] == [
        (name, results[key]) for key, _, name in meta["metrics"]
    ]
    for result in card.data.eval_results:
        assert (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split) == (
            meta["task_type"],
            meta["dataset"]["id"],
            meta["dataset"]["config"],
            meta["dataset"]["split"],
        )
    data = card.data.to_dict()
    assert data["library_name"] == "peft-hybrid" and data["base_model"] == "google/flan-t5-base"
    assert data["tags"] == ["peft-hybrid", "lora", "prompt-tuning", "base_model:adapter:google/flan-t5-base", task]
    assert data["datasets"] == [meta["dataset"]["id"]] and data["license"] == "apache-2.0"
    assert card.data.model_name == task


def test_the_last_evaluation_or_the_one_asked_for_is_reported():
    last = CardData.from_model(_model(), SUMMARY)
    assert last.results["rougeLsum"] == 45.123456789 and "runtime" not in last.results
    best = CardData.from_model(_model(), SUMMARY, evaluation_step=2)
    assert best.results == {"loss": 7.0, "rouge1": 41.25, "rouge2": 17.5, "rougeL": 33.125, "rougeLsum": 35.0}


def test_untrained_adapter_has_no_model_index_and_a_local_base_is_not_linked(tmp_path):
    model = _model(task=None)
    model.hybrid_config.base_model_name_or_path = str(tmp_path)
    card = ModelCard(render_card(CardData.from_model(model)))
    assert card.data.eval_results is None and card.data.base_model is None
    trainable, total = model.num_parameters(True), model.num_parameters()
    assert f"{trainable:,} of {total:,}" in str(card)


def test_write_card_draws_the_curve_and_shows_an_attribution_heatmap(tmp_path):
    model = _model()
    folder = model.save_pretrained(tmp_path / "adapter")
    (folder / "attribution_heatmap.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    readme = write_card(folder, CardData.from_model(model, SUMMARY))
    assert (folder / CURVE_IMAGE).read_bytes().startswith(b"\x89PNG")
    text = readme.read_text(encoding="utf-8")
    assert f"![Training loss]({CURVE_IMAGE})" in text and "(attribution_heatmap.png)" in text


def test_without_matplotlib_the_card_skips_the_curve_with_a_notice(tmp_path, monkeypatch, caplog):
    model = _model()
    folder = model.save_pretrained(tmp_path / "adapter")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with caplog.at_level("INFO", logger="peft_hybrid.hub.card"):
        text = write_card(folder, CardData.from_model(model, SUMMARY)).read_text(encoding="utf-8")
    assert not (folder / CURVE_IMAGE).exists() and "Training curve" not in text
    assert "matplotlib is not installed" in caplog.text


def test_save_pretrained_writes_a_card_that_names_the_mode_and_counts():
    model = _model()
    text = render_card(CardData.from_model(model))
    assert "| mode | `hybrid` |" in text
    # No repo id yet: the snippet loads the folder holding the card, and needs no rewriting at upload.
    assert 'load_for_inference(".")' in text and "path/to/" not in text
    named = render_card(CardData.from_model(model, repo_id="me/tiny-hybrid"))
    assert 'load_for_inference("me/tiny-hybrid")' in named and 'load_for_inference(".")' not in named


def test_metrics_measured_on_local_files_do_not_claim_the_hub_dataset():
    from peft_hybrid import HybridConfig, HybridModel
    from peft_hybrid.hub.card import CardData
    from peft_hybrid.offline import t5_from_preset

    base, tokenizer = t5_from_preset("tiny")
    model = HybridModel(base, HybridConfig(task="samsum"), tokenizer=tokenizer)
    local = {"id": "local", "name": "local samsum files (train.csv, val.csv)", "revision": None}
    data = CardData.from_model(
        model, results={"rouge1": 40.0, "rouge2": 20.0, "rougeL": 30.0, "rougeLsum": 31.0}, dataset=local
    )
    assert {r.dataset_type for r in data.eval_results()} == {"local"}
    assert {r.dataset_name for r in data.eval_results()} == {"local samsum files (train.csv, val.csv)"}
    assert data.metadata().datasets is None
    hub = CardData.from_model(model, results={"rouge1": 40.0})
    assert hub.metadata().datasets == ["knkarthick/samsum"]


def test_a_local_base_is_named_but_not_linked_to_the_hub(tmp_path):
    from peft_hybrid.hub.card import CardData, render_card

    local = tmp_path / "my-base"
    local.mkdir()
    text = render_card(CardData(mode="hybrid", base_model=str(local)))
    assert f"the local base model `{local}` (not on the Hub)" in text and "huggingface.co/" + str(local) not in text
    hub = render_card(CardData(mode="hybrid", base_model="google/flan-t5-base"))
    assert "(https://huggingface.co/google/flan-t5-base)" in hub


def test_the_cards_usage_snippet_runs_in_the_saved_folder(tmp_path, monkeypatch, capsys):
    """The Usage block of a saved adapter's card, executed as written from its folder, prints one output."""
    import re

    from helpers import tiny_model

    model, tokenizer = tiny_model("hybrid", task="sst2")
    folder = model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(folder)
    exec(compile(snippet, "card usage", "exec"), {})
    printed = capsys.readouterr().out.strip()
    from peft_hybrid.inference import generate_texts, generation_settings, model_inputs

    config = model.hybrid_config
    expected = generate_texts(
        model, tokenizer, model_inputs(config, ["Your input text"]), **generation_settings(config)
    )
    assert printed == str(expected) and len(expected) == 1  # the saved adapter's own output
