"""Tokens processed per epoch on real SAMSum validation: length-grouped dynamic padding vs pad-to-512.

Reads ``../shared/data/samsum/val.csv`` beside the repository (skips with a message where it is
absent), formats and tokenizes it as training does (`peft_hybrid.tasks`, `peft_hybrid.training.data`,
source side, max 512 tokens) and simulates the Trainer's length-grouped sampler with
`peft_hybrid.training.data.padding_stats` at batch 16.

The real FLAN-T5 tokenizer cannot be downloaded here; ``--tokenizer offline`` (the default)
uses the project's offline SentencePiece tokenizer, whose small vocabulary splits text into
more pieces than FLAN-T5's, so the absolute counts are higher than FLAN-T5's and the ratio to
pad-to-512 is, if anything, understated. ``--tokenizer proxy`` trains a T5-style SentencePiece
unigram vocabulary of up to 32,000 pieces (FLAN-T5 has 32,000) on English text that is NOT
SAMSum (SST-2 train sentences and WikiSQL questions beside the repository), a closer stand-in
for FLAN-T5's tokenizer. Pass ``--tokenizer <folder>`` with a real T5 tokenizer to measure it
exactly.

    python bench/padding.py --out bench/results/padding_samsum.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _common import log, write_results

from peft_hybrid.tasks import get_task
from peft_hybrid.training.data import padding_stats, tokenize_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "samsum" / "val.csv"


def _proxy_tokenizer():
    import csv
    import json
    import tempfile

    from peft_hybrid.offline.presets import t5_tokenizer, train_t5_sentencepiece

    data = REPO_ROOT.parent / "shared" / "data"
    with open(data / "sst2" / "train_full.tsv", encoding="utf-8", newline="") as handle:
        lines = [row["sentence"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    for split in ("dev", "test"):
        with open(data / "wikisql" / f"{split}.jsonl", encoding="utf-8") as handle:
            lines.extend(json.loads(line)["question"] for line in handle if line.strip())
    # SentencePiece's default thread count, as the recorded results were made with.
    folder = train_t5_sentencepiece(lines, tempfile.mkdtemp(prefix="proxy-tokenizer-"), 32000, num_threads=16)
    tokenizer = t5_tokenizer(folder)
    log(f"proxy tokenizer: {len(tokenizer)} pieces trained on {len(lines):,} non-SAMSum sentences")
    return tokenizer


def load_tokenizer(name: str):
    if name == "proxy":
        return _proxy_tokenizer()
    if name == "offline":
        from peft_hybrid.offline import offline_tokenizer

        return offline_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tokenizer", default="offline", help="'offline', 'proxy' or a folder with a T5 tokenizer.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pad-to", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.data.is_file():
        log(f"skipped: {args.data} not found (the SAMSum validation CSV lives beside the repository)")
        return None
    task = get_task("samsum")
    dataset = task.format_dataset(task.load(data_file=args.data), use_task_tags=False)
    tokenized, truncation = tokenize_dataset(
        dataset, load_tokenizer(args.tokenizer), max_source_length=args.pad_to, max_target_length=128
    )
    lengths = tokenized["length"]
    stats = padding_stats(lengths, args.batch, pad_to=args.pad_to)
    stats["fixed_over_grouped"] = stats["fixed_tokens"] / stats["grouped_dynamic_tokens"]
    stats["fixed_over_random_dynamic"] = stats["fixed_tokens"] / stats["random_dynamic_tokens"]
    stats["median_source_tokens"] = statistics.median(lengths)
    stats["truncation"] = truncation
    rows = [
        ("pad to 512 (paper)", stats["fixed_tokens"], stats["fixed_pad_fraction"]),
        ("dynamic padding, shuffled", stats["random_dynamic_tokens"], stats["random_dynamic_pad_fraction"]),
        ("dynamic padding, length-grouped", stats["grouped_dynamic_tokens"], stats["grouped_dynamic_pad_fraction"]),
        ("no padding at all", stats["real_tokens"], 0.0),
    ]
    table = "\n".join(
        [
            f"| batching (batch {args.batch:d}) | source tokens / epoch | pad fraction | vs pad-to-{args.pad_to:d} |",
            "|---|---|---|---|",
        ]
        + [
            f"| {name} | {tokens:,} | {frac:.1%} | {stats['fixed_tokens'] / tokens:.2f}x fewer |"
            for name, tokens, frac in rows
        ]
    )
    log(f"SAMSum val ({stats['examples']} dialogues, tokenizer={args.tokenizer})\n{table}")
    write_results(args.out, {"data": args.data.name, "tokenizer": args.tokenizer, "stats": stats, "table": table})
    return stats


if __name__ == "__main__":
    main()
