"""Structured output's cost per generated token: the server's grammar mask against a plain step.

For a JSON schema and a regex, ``RowGrammar`` (``outlines_core``, what ``peft-hybrid serve`` uses)
masks the scores of one row at each step of a walk that takes the highest-scoring allowed token
of random scores, until the grammar ends; the time per step is reported beside the compile time.
With ``--compare``, the same walk runs with ``xgrammar`` when it is importable (a library the
choice was measured against).

    python bench/grammar.py --out bench/results/grammar_tiny_cpu.json
"""

from __future__ import annotations

import json
import time

import torch
from _common import log, make_parser, write_results

from peft_hybrid.offline import offline_tokenizer
from peft_hybrid.serve.grammar import JSON_WHITESPACE, GrammarCompiler

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
    "required": ["name", "age", "ok"],
    "additionalProperties": False,
}
SPECS = {"json": ("json", json.dumps(SCHEMA)), "regex": ("regex", "(positive|negative|neutral)")}
MAX_STEPS = 64


def walk(step, vocab: int, eos: int, seed: int) -> tuple[int, float]:
    """Steps taken and seconds per step of ``step(ids, scores) -> scores`` over random scores."""
    generator = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    started = time.perf_counter()
    for _ in range(MAX_STEPS):
        token = int(torch.argmax(step(ids, torch.randn(vocab, generator=generator))))
        if token == eos:
            break
        ids.append(token)
    return len(ids) + 1, (time.perf_counter() - started) / (len(ids) + 1)


def xgrammar_step(tokenizer, vocab: int, kind: str, value: str):
    import xgrammar as xgr

    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    encoded = ["" if i in special else p.replace("\u2581", " ") for i, p in enumerate(pieces)] + [""] * (
        vocab - len(pieces)
    )
    info = xgr.TokenizerInfo(
        encoded, vocab_type=xgr.VocabType.RAW, vocab_size=vocab, stop_token_ids=[tokenizer.eos_token_id]
    )
    compiler = xgr.GrammarCompiler(info)
    compiled = (
        compiler.compile_json_schema(value, any_whitespace=False) if kind == "json" else compiler.compile_regex(value)
    )
    matcher, mask, seen = xgr.GrammarMatcher(compiled), xgr.allocate_token_bitmask(1, vocab), [0]

    def step(ids, scores):
        for token in ids[seen[0] :]:
            matcher.accept_token(token)
        seen[0] = len(ids)
        matcher.fill_next_token_bitmask(mask)
        scores = scores[None].clone()
        xgr.apply_token_bitmask_inplace(scores, mask)
        return scores[0]

    return step


def main(argv=None) -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--compare", action="store_true", help="also time xgrammar when it is importable")
    args = parser.parse_args(argv)
    tokenizer = offline_tokenizer()
    vocab = (len(tokenizer) + 63) // 64 * 64  # the tiny preset's embedding rows
    rows = []
    for name, spec in SPECS.items():
        started = time.perf_counter()
        compiler = GrammarCompiler(tokenizer, vocab)
        compiler.processor(spec)
        compile_s = time.perf_counter() - started
        results = [walk(compiler.processor(spec), vocab, tokenizer.eos_token_id, seed) for seed in range(args.reps)]
        rows.append(
            {
                "library": "outlines_core",
                "grammar": name,
                "whitespace": JSON_WHITESPACE,
                "compile_s": compile_s,
                "ms_per_token": 1000 * sum(r[1] for r in results) / len(results),
            }
        )
        if args.compare:
            try:
                step = xgrammar_step(tokenizer, vocab, *spec)
            except ImportError:
                log("xgrammar is not importable: skipped")
                continue
            walked = walk(step, vocab, tokenizer.eos_token_id, 0)
            rows.append({"library": "xgrammar", "grammar": name, "ms_per_token": 1000 * walked[1]})
    for row in rows:
        log(f"{row['library']:>14} {row['grammar']:>6}: {row['ms_per_token']:.3f} ms per token")
    write_results(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
