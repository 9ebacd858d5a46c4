"""Miniature ablation on the real benchmarks: pre-train a small T5, then none/prompt/lora/hybrid.

FLAN-T5 cannot be downloaded here, and an adapter on a random model measures nothing. So this
script (1) trains a SentencePiece tokenizer and (2) pre-trains a small T5 with span corruption
on the benchmarks' own unlabelled text (SST-2 train sentences, SAMSum validation dialogues,
WikiSQL dev questions) for a bounded time, then (3) runs `peft_hybrid.training.ablation.run_ablation`
on SST-2 (train on a slice of train_full, select on a held-out slice of train_full, report on
the 872-sentence dev split) and, with ``--tasks sst2,samsum``, on SAMSum (train on validation,
report on a slice of test). Pre-training never sees the reported splits.

The data is read from ``../shared/data`` beside the checkout and never copied into the
repository; the pre-trained base, the data slices and the adapters go to ``--work-dir``
(default: a temporary folder). The tables are printed and written to ``--out`` (markdown).

Run (about 25 minutes on 2 busy CPU cores):

    python bench/mini_ablation.py --pretrain-seconds 480 --tasks sst2,samsum --out RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from peft_hybrid.offline.synthetic import write_samsum_csv  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / "shared" / "data"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="Base, data slices, adapters (default: a temp folder)."
    )
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the results.")
    parser.add_argument("--tasks", default="sst2", help="Comma-separated: sst2, samsum.")
    parser.add_argument("--pretrain-seconds", type=float, default=480.0)
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--sst2-train", type=int, default=4000, help="Training examples from train_full.")
    parser.add_argument("--sst2-heldout", type=int, default=400, help="Model-selection examples from train_full.")
    parser.add_argument("--samsum-test", type=int, default=200, help="SAMSum test dialogues reported on.")
    parser.add_argument("--steps", type=int, default=300, help="SST-2 training steps per mode (same for every mode).")
    parser.add_argument("--samsum-steps", type=int, default=120, help="SAMSum training steps per mode.")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine).")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _corpus(data: Path) -> list[str]:
    """Unlabelled text only; none of it from a split that a table reports on."""
    texts = [r["sentence"] for r in _read_tsv(data / "sst2" / "train_full.tsv")]
    texts += [r["dialogue"].replace("\r\n", "\n") for r in _read_csv(data / "samsum" / "val.csv")]
    with (data / "wikisql" / "dev.jsonl").open(encoding="utf-8") as f:
        texts += [json.loads(line)["question"] for line in f if line.strip()]
    return texts


def _tokenizer(texts: list[str], vocab_size: int, folder: Path):
    from peft_hybrid.offline.presets import t5_tokenizer, train_t5_sentencepiece

    sample = random.Random(0).sample(texts, min(len(texts), 20000))
    return t5_tokenizer(
        train_t5_sentencepiece(sample, folder, vocab_size, character_coverage=0.9995, hard_vocab_limit=True)
    )


def _base(tokenizer, d_model: int, layers: int, seed: int):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config)


def _write_tsv(path: Path, rows: list[dict[str, str]]) -> str:
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{r['sentence']}\t{r['label']}\n" for r in rows)
    return str(path)


def _task_files(task: str, args: argparse.Namespace, folder: Path) -> tuple[dict[str, str], list[str]]:
    """Local files for the recipe (slices written to the work folder) and extra recipe arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    if task == "sst2":
        train_full = _read_tsv(args.data_dir / "sst2" / "train_full.tsv")
        random.Random(args.seed).shuffle(train_full)
        files = {
            "train_file": _write_tsv(folder / "train.tsv", train_full[: args.sst2_train]),
            "validation_file": _write_tsv(
                folder / "heldout.tsv", train_full[args.sst2_train : args.sst2_train + args.sst2_heldout]
            ),
            "test_file": str(args.data_dir / "sst2" / "dev.tsv"),
        }
        extra = [
            "--max_source_length",
            "96",
            "--per_device_train_batch_size",
            "32",
            "--per_device_eval_batch_size",
            "64",
        ]
        return files, [*extra, *_budget(args.steps, evaluations=3)]
    if task == "samsum":
        val = _read_csv(args.data_dir / "samsum" / "val.csv")
        test = _read_csv(args.data_dir / "samsum" / "test.csv")[: args.samsum_test]
        files = {
            "train_file": str(write_samsum_csv(folder / "train.csv", val[:718])),
            "validation_file": str(write_samsum_csv(folder / "heldout.csv", val[718:])),
            "test_file": str(write_samsum_csv(folder / "test.csv", test)),
        }
        extra = [
            "--max_source_length",
            "256",
            "--max_target_length",
            "64",
            "--per_device_train_batch_size",
            "16",
            "--per_device_eval_batch_size",
            "32",
        ]
        # Generating 128-token summaries is the slow part on CPU: select on one evaluation, at the end.
        return files, [*extra, *_budget(args.samsum_steps, evaluations=1)]
    raise SystemExit(f"--tasks: unknown task {task!r}; choose sst2 or samsum")


def _budget(steps: int, evaluations: int) -> list[str]:
    every = str(max(steps // evaluations, 1))
    return [
        "--max_steps",
        str(steps),
        "--warmup_steps",
        str(steps // 10),
        "--eval_strategy",
        "steps",
        "--eval_steps",
        every,
        "--save_strategy",
        "steps",
        "--save_steps",
        every,
    ]


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    if not args.data_dir.is_dir():
        raise SystemExit(f"{args.data_dir} not found: this benchmark reads the real data beside the checkout.")
    from peft_hybrid.offline.pretrain import pretrain_span_corruption
    from peft_hybrid.training.ablation import run_ablation
    from peft_hybrid.training.recipe import parse_args

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="peft-hybrid-mini-ablation-"))
    started = time.perf_counter()
    texts = _corpus(args.data_dir)
    tokenizer = _tokenizer(texts, args.vocab_size, work / "spm")
    base = _base(tokenizer, args.d_model, args.layers, args.seed)
    pretrain = pretrain_span_corruption(
        base,
        tokenizer,
        texts,
        seconds=args.pretrain_seconds,
        batch_size=32,
        chunk_length=64,
        learning_rate=3e-3,
        warmup_steps=100,
        seed=args.seed,
    )
    base_dir = work / "base"
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    report = {
        "corpus_documents": len(texts),
        "vocab": len(tokenizer),
        "base_params": base.num_parameters(),
        "shape": {
            "d_model": args.d_model,
            "layers": f"{args.layers}+{args.layers}",
            "heads": 4,
            "d_ff": 2 * args.d_model,
        },
        "pretrain": pretrain.to_dict(),
        "tasks": {},
    }
    print(json.dumps(report, indent=2), flush=True)
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        argv = _task_argv(task, args, work, base_dir)
        script_args, hybrid_config, training_args = parse_args(argv, task=task)
        result = run_ablation(script_args, hybrid_config, training_args)
        report["tasks"][task] = {"table": result.markdown(), "result": result.to_dict(), "argv": argv}
        print(result.markdown(), flush=True)
        # Written after every task, so a run cut short keeps the tables it finished.
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        report["machine"] = (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}"
        )
        (work / "mini_ablation.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        if args.out is not None:
            args.out.write_text(_markdown(report, args), encoding="utf-8")
    print(f"work folder: {work}", flush=True)


def _task_argv(task: str, args: argparse.Namespace, work: Path, base_dir: Path) -> list[str]:
    """The recipe's command line for one task's ablation: the same budget and seed for every mode."""
    files, extra = _task_files(task, args, work / "data" / task)
    return [
        "--model_name_or_path",
        str(base_dir),
        "--output_dir",
        str(work / "ablation" / task),
        "--train_file",
        files["train_file"],
        "--validation_file",
        files["validation_file"],
        "--test_file",
        files["test_file"],
        "--learning_rate",
        str(args.learning_rate),
        "--early_stopping_patience",
        "0",
        "--seed",
        str(args.seed),
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "50",
        *extra,
    ]


def _markdown(report: dict, args: argparse.Namespace) -> str:
    # The work folder is machine-specific and not part of the result.
    argv = sys.argv[1:]
    if "--work-dir" in argv:
        at = argv.index("--work-dir")
        argv = argv[:at] + argv[at + 2 :]
    command = "python bench/mini_ablation.py " + " ".join(argv)
    lines = [
        "# Results: miniature ablation on the real benchmarks",
        "",
        "The paper's Table 2 (base / prompt only / LoRA only / hybrid) reproduced in miniature on CPU: a small T5 "
        "pre-trained here, not FLAN-T5 (which cannot be downloaded in this environment), so the absolute numbers are "
        "far below the paper's; what the table compares is the four modes under one identical budget.",
        "",
        f"Command: `{command}` ({report['wall_seconds'] / 60:.1f} min wall on {report['machine']}; "
        "the machine was shared).",
        "",
        "## Base model",
        "",
        f"- T5 v1.1 layout, d_model {report['shape']['d_model']}, {report['shape']['layers']} layers, 4 heads, "
        f"d_ff {report['shape']['d_ff']} (gated-GELU); {report['base_params']:,} parameters.",
        f"- SentencePiece unigram tokenizer trained by the script ({report['vocab']:,} tokens incl. 100 sentinels).",
        f"- Span-corruption pre-training (`peft_hybrid.offline.pretrain`, noise 0.15, mean span 3, chunks of 64 "
        f"tokens, batch 32, AdamW 3e-3) on {report['corpus_documents']:,} unlabelled documents: SST-2 train_full "
        f"sentences, SAMSum validation dialogues, WikiSQL dev questions. Pre-training: "
        f"{report['pretrain']['steps']:,} steps in {report['pretrain']['seconds']:.0f} s, loss "
        f"{report['pretrain']['first_loss']:.2f} → "
        f"{report['pretrain']['final_loss']:.2f}.",
        "",
    ]
    for task, entry in report["tasks"].items():
        settings = entry["result"]["settings"]
        lines += [f"## {task}", "", entry["table"], "Settings shared by every row:", ""]
        lines += [
            f"- {k}: `{v}`"
            for k, v in settings.items()
            if k not in ("base_model", "train_file", "validation_file", "test_file")
        ]
        lines += [""]
    lines += [
        "Splits. SST-2: train on a seeded slice of train_full, select the checkpoint on another slice of "
        "train_full, report accuracy on the 872-sentence dev split. SAMSum (if present): train on 718 "
        "validation dialogues, select on the other 100, report ROUGE (rouge_score, stemmer, corpus mean of "
        "F-measures; rougeLsum one sentence per line) on the first test dialogues.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
