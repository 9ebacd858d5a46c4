"""The offline end-to-end demo: pre-train a tiny T5, adapt it with LoRA + soft prompt, show the gain.

Everything runs on CPU in about two minutes, without network:

1. a tiny T5 (the ``tiny`` preset's shape, `peft_hybrid.offline.presets.t5_model`, with a
   whole-word tokenizer, `peft_hybrid.offline.presets.word_tokenizer`) learns the language of
   synthetic dialogues by span-corruption pre-training (`peft_hybrid.offline.pretrain`), and is
   saved with its tokenizer to ``<output_dir>/base``;
2. synthetic dialogue -> summary pairs are written as SAMSum-format CSV files to
   ``<output_dir>/data``;
3. the training recipe (`peft_hybrid.training.recipe.main`) scores the base alone (mode ``none``, in
   ``<output_dir>/baseline``) and trains a hybrid adapter (``<output_dir>/adapter``: adapter,
   model card, tokenizer, metrics and predictions JSON);
4. the adapter is reloaded with ``HybridModel.from_pretrained(<output_dir>/adapter)`` (its config
   names the saved base) and must reproduce the prediction made during evaluation for the
   sample: the held-out example of median ROUGE-L (`median_example`), so it shows a typical
   result rather than a chosen one;
5. ``<output_dir>/summary.json`` records paths, ROUGE before/after, timings and the sample.

Example:
    >>> from peft_hybrid.offline.demo import run_demo
    >>> summary = run_demo("demo-out", pretrain_steps=2, train_steps=2, train_examples=8, eval_examples=2,
    ...                    progress=False)  # a miniature run (the Trainer prints its logs)
    {'eval_loss': ...}
    >>> sorted(summary["rouge"])
    ['adapter', 'base', 'gain']

With the defaults, ``summary["rouge"]["adapter"]["rougeL"]`` beats ``summary["rouge"]["base"]["rougeL"]``
(tests/offline/test_demo.py checks it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from peft_hybrid.modeling.serialization import atomic_write_bytes

SUMMARY_NAME = "summary.json"
DEMO_TASK = "samsum"
_ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# The base's settings. The tokenizer's pieces are the corpus's words (names and places are one
# token each, and sequences are 30% shorter than with the fragment tokenizer of the tests'
# preset). Longer, denser corrupted spans than T5's 15% x 3 make pre-training generate runs of
# words, as a summary does. No dropout: a few hundred steps on plentiful text do not overfit, and
# dropout costs a fifth of each CPU step. The lm_head tied to the embedding (original T5) saves a
# vocabulary-sized matrix, and is what transformers 5 expects of any T5 folder it loads: it warns on
# every load of one with its own lm_head (FLAN-T5's layout), which a demo user could do nothing about.
TOKENIZER_PIECES = 400
PRETRAIN = dict(batch_size=32, chunk_length=64, learning_rate=3e-3, noise_density=0.3, mean_span_length=6.0)
LEARNING_RATE = 2e-2


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
        # fp32 on purpose (the demo runs on CPU): saying so keeps the recipe from warning that bf16 is unavailable.
        "--bf16",
        "false",
        "--report_to",
        "none",
        "--max_steps",
        str(steps),
        "--learning_rate",
        str(LEARNING_RATE),
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


def median_example(rows: Sequence[Mapping[str, str]]) -> tuple[int, float]:
    """``(index, ROUGE-L)`` of the example whose ROUGE-L is the median of ``rows`` (``prediction``/``reference``).

    Each example is scored alone with the task's metric (the held-out ROUGE-L is their mean). For
    an even count it is the lower of the two middle examples; equal scores are ordered by index,
    so the same rows always give the same example.

    Example:
        >>> rows = [{"reference": "a b c d", "prediction": p} for p in ("a b c d", "x", "a b", "a", "a b c")]
        >>> median_example(rows)
        (2, 66.67)
    """
    from peft_hybrid.tasks.samsum import rouge

    if not rows:
        raise ValueError("no held-out predictions to pick a sample from; pass eval_examples >= 1.")
    scores = [rouge([row["prediction"]], [row["reference"]])["rougeL"] for row in rows]
    ranked = sorted(range(len(rows)), key=lambda i: (scores[i], i))
    index = ranked[(len(ranked) - 1) // 2]
    return index, round(scores[index], 2)


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
        train_steps: hybrid adapter training steps (batch 16, lr 2e-2: 8,064 parameters on a tiny base).
        train_examples / eval_examples: synthetic dialogue -> summary pairs per split.
        progress: tqdm bars for pre-training and the Trainer.

    Returns:
        The summary: ``paths``, ``rouge`` (``base``, ``adapter``, ``gain``), ``trainable_params``,
        ``pretrain`` (steps, loss), ``sample`` (the held-out example of median ROUGE-L, `median_example`:
        index, ROUGE-L, dialogue, reference, prediction, reloaded prediction), ``reload_identical``,
        ``seconds`` per stage and in total.
    """
    counts = {"pretrain_steps": pretrain_steps, "train_steps": train_steps}
    counts.update(train_examples=train_examples, eval_examples=eval_examples)
    for name, value in counts.items():
        if value <= 0:
            raise ValueError(f"{name}={value}: pass a positive number.")
    root = Path(output_dir).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"--output-dir {output_dir}: the folder exists and is not empty; pass a new or empty folder.")
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    base_dir = root / "base"
    pretrain = _pretrain_base(base_dir, seed, pretrain_steps, progress)
    seconds["pretrain"] = round(time.perf_counter() - started, 1)

    data = _write_data(root / "data", seed, train_examples, eval_examples)
    # The base as the user named its folder (relative stays relative) is what the adapter records.
    named_base = Path(output_dir) / "base"
    results = _train_both_modes(root, named_base, data, seed, train_steps, progress, seconds)

    stage = time.perf_counter()
    adapter_dir = root / "adapter"
    reloaded, sample = _median_sample(adapter_dir)
    seconds["reload"] = round(time.perf_counter() - stage, 1)
    seconds["total"] = round(time.perf_counter() - started, 1)

    before, after = _rouge(results["none"]["eval"]), _rouge(results["hybrid"]["eval"])
    summary = {
        "task": DEMO_TASK,
        "seed": seed,
        "paths": _paths(root, data),
        "rouge": {"base": before, "adapter": after, "gain": {k: round(after[k] - before[k], 2) for k in _ROUGE_KEYS}},
        "trainable_params": reloaded.num_parameters(trainable_only=True),
        "total_params": reloaded.num_parameters(),
        "pretrain": pretrain.to_dict(),
        "train_steps": train_steps,
        "examples": {"train": train_examples, "validation": eval_examples},
        "sample": sample,
        "reload_identical": sample["reloaded_prediction"] == sample["prediction"],
        "seconds": seconds,
    }
    atomic_write_bytes(root / SUMMARY_NAME, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary


def _write_data(folder: Path, seed: int, train_examples: int, eval_examples: int) -> dict[str, Path]:
    """Synthetic SAMSum-format train and validation files; returns split -> path."""
    from peft_hybrid.offline.synthetic import dialogue_summary_pairs, write_samsum_csv

    records = dialogue_summary_pairs(train_examples + eval_examples, seed=seed)
    return {
        "train": write_samsum_csv(folder / "train.csv", records[:train_examples]),
        "validation": write_samsum_csv(folder / "validation.csv", records[train_examples:]),
    }


def _pretrain_base(base_dir: Path, seed: int, steps: int, progress: bool) -> Any:
    """A tiny T5 pre-trained with span corruption, saved with its tokenizer into ``base_dir``."""
    from peft_hybrid.offline.presets import PRESETS, t5_model, word_tokenizer
    from peft_hybrid.offline.pretrain import pretrain_span_corruption
    from peft_hybrid.offline.synthetic import tokenizer_corpus

    tokenizer = word_tokenizer(tokenizer_corpus(seed + 1), TOKENIZER_PIECES)
    base = t5_model(PRESETS["tiny"], tokenizer, seed=seed, tied_lm_head=True, dropout_rate=0.0)
    texts = _pretraining_texts(2000, seed + 1)
    pretrain = pretrain_span_corruption(base, tokenizer, texts, steps=steps, seed=seed, progress=progress, **PRETRAIN)
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    return pretrain


def _train_both_modes(
    root: Path, base_dir: Path, data: dict[str, Path], seed: int, steps: int, progress: bool, seconds: dict
) -> dict[str, Any]:
    """The recipe's results for the untouched base (``baseline/``) and the hybrid adapter (``adapter/``)."""
    from peft_hybrid.training.recipe import main as run_recipe
    from peft_hybrid.training.recipe import parse_args

    results = {}
    for mode, folder in (("none", root / "baseline"), ("hybrid", root / "adapter")):
        stage = time.perf_counter()
        results[mode] = run_recipe(*parse_args(_training_argv(base_dir, data, folder, mode, seed, steps, progress)))
        seconds[f"{mode}_mode"] = round(time.perf_counter() - stage, 1)
    return results


def _paths(root: Path, data: dict[str, Path]) -> dict[str, Any]:
    adapter_dir = root / "adapter"
    return {
        "output_dir": str(root),
        "base": str(root / "base"),
        "data": {k: str(v) for k, v in data.items()},
        "baseline": str(root / "baseline"),
        "adapter": str(adapter_dir),
        "card": str(adapter_dir / "README.md"),
        "metrics": sorted(str(p) for p in adapter_dir.glob("eval_metrics-*.json")),
    }


def _median_sample(adapter_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The adapter reloaded from disk, and the held-out example of median ROUGE-L with its prediction again."""
    from peft_hybrid.modeling.model import HybridModel

    predictions = next(adapter_dir.glob("eval_predictions-*.jsonl")).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in predictions]
    index, score = median_example(rows)
    reloaded, again = _reload_and_predict(HybridModel, adapter_dir, rows[index]["source"])
    sample = {"index": index, "rougeL": score, "dialogue": rows[index]["source"]}
    sample.update(reference=rows[index]["reference"], prediction=rows[index]["prediction"], reloaded_prediction=again)
    return reloaded, sample


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
        f"The held-out dialogue of median ROUGE-L (#{sample['index']}: ROUGE-L {sample['rougeL']:.2f}, the median "
        f"of the {summary['examples']['validation']} dialogues' own scores):\n  "
        + sample["dialogue"].replace("\n", "\n  ")
        + "\n"
        f"reference:  {sample['reference']}\n"
        f"adapter:    {sample['prediction']}\n"
        f"reloaded:   {sample['reloaded_prediction']} "
        f"({'identical' if summary['reload_identical'] else 'DIFFERENT'})\n\n"
        f"base model: {paths['base']}\nadapter:    {paths['adapter']} (card: README.md)\n"
        f"summary:    {Path(paths['output_dir']) / SUMMARY_NAME}\n"
        f"time:       {summary['seconds']['total']:.0f} s\n"
        f"reload it:  HybridModel.from_pretrained({paths['adapter']!r})\n"
    )
