"""The offline end-to-end demo: pre-train a tiny T5, adapt it with LoRA + soft prompt, show the gain.

Everything runs on CPU in about two minutes, without network:

1. a tiny T5 (`peft_hybrid.offline.t5_from_preset("tiny")`) learns the language of synthetic
   dialogues by span-corruption pre-training (`peft_hybrid.offline.pretrain`), and is saved
   with its tokenizer to ``<output_dir>/base``;
2. synthetic dialogue -> summary pairs are written as SAMSum-format CSV files to
   ``<output_dir>/data``;
3. the training recipe (`peft_hybrid.training.recipe.main`) scores the base alone (mode ``none``, in
   ``<output_dir>/baseline``) and trains a hybrid adapter (``<output_dir>/adapter``: adapter,
   model card, tokenizer, metrics and predictions JSON);
4. the adapter is reloaded with ``HybridModel.from_pretrained(<output_dir>/adapter)`` (its config
   names the saved base) and must reproduce the prediction made during evaluation;
5. ``<output_dir>/summary.json`` records paths, ROUGE before/after, timings and the sample.

Example:
    >>> from peft_hybrid.offline.demo import run_demo
    >>> summary = run_demo("demo-out")  # doctest: +SKIP
    >>> summary["rouge"]["adapter"]["rougeL"] > summary["rouge"]["base"]["rougeL"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from peft_hybrid.modeling.serialization import atomic_write_bytes

SUMMARY_NAME = "summary.json"
DEMO_TASK = "samsum"
_ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _pretraining_texts(n: int, seed: int) -> list[str]:
    """Dialogues and summaries from a seed the fine-tuning data does not use."""
    from peft_hybrid.offline.synthetic import dialogue_summary_pairs

    texts = []
    for record in dialogue_summary_pairs(n, seed=seed):
        texts.append(record["dialogue"].replace("\r\n", "\n"))
        texts.append(record["summary"])
    return texts


def _training_argv(
    base_dir: Path, data: dict[str, Path], output_dir: Path, mode: str, seed: int, steps: int, progress: bool
) -> list[str]:
    return [
        "--task",
        DEMO_TASK,
        "--mode",
        mode,
        "--model_name_or_path",
        str(base_dir),
        "--train_file",
        str(data["train"]),
        "--validation_file",
        str(data["validation"]),
        "--output_dir",
        str(output_dir),
        # The demo owns its --output-dir (it rewrites base/ and data/ too): a rerun with another seed replaces it.
        "--overwrite_output_dir",
        "true",
        "--seed",
        str(seed),
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--max_steps",
        str(steps),
        "--learning_rate",
        "5e-3",
        "--warmup_steps",
        str(steps // 10),
        "--per_device_train_batch_size",
        "16",
        "--per_device_eval_batch_size",
        "32",
        "--max_source_length",
        "128",
        "--max_target_length",
        "48",
        "--logging_steps",
        str(max(steps // 5, 1)),
        # A fixed budget, scored once at the end: nothing to select, so no checkpoints either.
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--load_best_model_at_end",
        "false",
        "--early_stopping_patience",
        "0",
        "--disable_tqdm",
        str(not progress).lower(),
    ]


def _rouge(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(metrics[f"eval_{k}"]), 2) for k in _ROUGE_KEYS}


def run_demo(
    output_dir: str | Path,
    *,
    seed: int = 0,
    pretrain_steps: int = 300,
    train_steps: int = 200,
    train_examples: int = 800,
    eval_examples: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole demo into ``output_dir`` and return (and save) its summary.

    Args:
        output_dir: a new or empty folder (it holds ``base``, ``data``, ``baseline``, ``adapter``).
        seed: seeds the base weights, the data, pre-training and training; the same seed gives
            the same numbers.
        pretrain_steps: span-corruption steps (batch 32) before adaptation.
        train_steps: hybrid adapter training steps (batch 16, lr 5e-3).
        train_examples / eval_examples: synthetic dialogue -> summary pairs per split.
        progress: tqdm bars for pre-training and the Trainer.

    Returns:
        The summary: ``paths``, ``rouge`` (``base``, ``adapter``, ``gain``), ``trainable_params``,
        ``pretrain`` (steps, loss), ``sample`` (dialogue, reference, prediction, reloaded
        prediction), ``reload_identical``, ``seconds`` per stage and in total.
    """
    from peft_hybrid.modeling.model import HybridModel
    from peft_hybrid.offline import t5_from_preset
    from peft_hybrid.offline.pretrain import pretrain_span_corruption
    from peft_hybrid.offline.synthetic import dialogue_summary_pairs, write_samsum_csv
    from peft_hybrid.training.recipe import main as run_recipe
    from peft_hybrid.training.recipe import parse_args

    for name, value in (
        ("pretrain_steps", pretrain_steps),
        ("train_steps", train_steps),
        ("train_examples", train_examples),
        ("eval_examples", eval_examples),
    ):
        if value <= 0:
            raise ValueError(f"{name}={value}: pass a positive number.")
    root = Path(output_dir).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"--output-dir {output_dir}: the folder exists and is not empty; pass a new or empty folder.")
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    base, tokenizer = t5_from_preset("tiny", seed=seed)
    pretrain = pretrain_span_corruption(
        base, tokenizer, _pretraining_texts(2000, seed + 1), steps=pretrain_steps, seed=seed, progress=progress
    )
    base_dir = root / "base"
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    seconds["pretrain"] = round(time.perf_counter() - started, 1)

    records = dialogue_summary_pairs(train_examples + eval_examples, seed=seed)
    data = {
        "train": write_samsum_csv(root / "data" / "train.csv", records[:train_examples]),
        "validation": write_samsum_csv(root / "data" / "validation.csv", records[train_examples:]),
    }
    results = {}
    for mode, folder in (("none", root / "baseline"), ("hybrid", root / "adapter")):
        stage = time.perf_counter()
        results[mode] = run_recipe(
            *parse_args(_training_argv(base_dir, data, folder, mode, seed, train_steps, progress))
        )
        seconds[f"{mode}_mode"] = round(time.perf_counter() - stage, 1)

    stage = time.perf_counter()
    adapter_dir = root / "adapter"
    predictions = [
        json.loads(line)
        for line in next(adapter_dir.glob("eval_predictions-*.jsonl")).read_text(encoding="utf-8").splitlines()
    ]
    reloaded, reloaded_prediction = _reload_and_predict(HybridModel, adapter_dir, predictions[0]["source"])
    seconds["reload"] = round(time.perf_counter() - stage, 1)
    seconds["total"] = round(time.perf_counter() - started, 1)

    before, after = _rouge(results["none"]["eval"]), _rouge(results["hybrid"]["eval"])
    summary = {
        "task": DEMO_TASK,
        "seed": seed,
        "paths": {
            "output_dir": str(root),
            "base": str(base_dir),
            "data": {k: str(v) for k, v in data.items()},
            "baseline": str(root / "baseline"),
            "adapter": str(adapter_dir),
            "card": str(adapter_dir / "README.md"),
            "metrics": sorted(str(p) for p in adapter_dir.glob("eval_metrics-*.json")),
        },
        "rouge": {"base": before, "adapter": after, "gain": {k: round(after[k] - before[k], 2) for k in _ROUGE_KEYS}},
        "trainable_params": reloaded.num_parameters(trainable_only=True),
        "total_params": reloaded.num_parameters(),
        "pretrain": pretrain.to_dict(),
        "train_steps": train_steps,
        "examples": {"train": train_examples, "validation": eval_examples},
        "sample": {
            "dialogue": predictions[0]["source"],
            "reference": predictions[0]["reference"],
            "prediction": predictions[0]["prediction"],
            "reloaded_prediction": reloaded_prediction,
        },
        "reload_identical": reloaded_prediction == predictions[0]["prediction"],
        "seconds": seconds,
    }
    atomic_write_bytes(root / SUMMARY_NAME, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary


def _reload_and_predict(model_class: Any, adapter_dir: Path, source: str) -> tuple[Any, str]:
    """Load the adapter the way a user would (base from its config) and generate for ``source``."""
    from transformers import AutoTokenizer

    from peft_hybrid.tasks import get_task

    model = model_class.from_pretrained(adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    batch = tokenizer([source], return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**batch, **get_task(DEMO_TASK).generation_kwargs)
    return model, tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)[0].strip()


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable end of the demo: ROUGE before/after, the sample and where things are."""
    rouge = summary["rouge"]
    rows = "\n".join(
        f"  {k:<10} {rouge['base'][k]:>6.2f} -> {rouge['adapter'][k]:>6.2f}  ({rouge['gain'][k]:+.2f})"
        for k in _ROUGE_KEYS
    )
    sample = summary["sample"]
    paths = summary["paths"]
    return (
        f"ROUGE on {summary['examples']['validation']} held-out dialogues (base alone -> hybrid adapter, "
        f"{summary['trainable_params']:,} trainable of {summary['total_params']:,} parameters):\n{rows}\n\n"
        f"Sample dialogue:\n  " + sample["dialogue"].replace("\n", "\n  ") + "\n"
        f"reference:  {sample['reference']}\n"
        f"adapter:    {sample['prediction']}\n"
        f"reloaded:   {sample['reloaded_prediction']} "
        f"({'identical' if summary['reload_identical'] else 'DIFFERENT'})\n\n"
        f"base model: {paths['base']}\nadapter:    {paths['adapter']} (card: README.md)\n"
        f"summary:    {Path(paths['output_dir']) / SUMMARY_NAME}\n"
        f"time:       {summary['seconds']['total']:.0f} s\n"
        f"reload it:  HybridModel.from_pretrained({paths['adapter']!r})\n"
    )
