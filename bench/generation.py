"""Greedy generation throughput: plain base, stock hybrid, peft_hybrid unmerged and merged.

Every variant generates exactly ``new_tokens`` per example (``min_new_tokens=max_new_tokens``),
so new tokens/s compare like for like. The merged variant times ``with merged_lora(model):
model.generate(...)`` whole (the merge is inside the timing) and checks its tokens against the
unmerged model's eager ones. With ``--fast`` (default on cuda) also the merged model on a bf16
base; with ``--compile`` also the merged model with its stacks compiled (`compile_model`); with
``--fast-generation`` the plain base, the stock hybrid and the merged hybrid once more under
``fast_generation`` (static cache, compiled steps), each paired with its own eager row and with
the other fast rows. Compiles happen in a variant's first call, outside the timed reps.

    python bench/generation.py --shape small --device cpu --reps 5 --out bench/results/gen_small.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import (
    SHAPES,
    Shape,
    add_ratios,
    autocast,
    build_base,
    log,
    make_batch,
    make_parser,
    markdown_table,
    paired_speedup,
    run_interleaved,
    setup,
    write_results,
)
from train_step import STOCK_HYBRID, stock_hybrid

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.inference import fast_generation, merged_lora
from peft_hybrid.training.speed import cast_frozen_base_, compile_model, dynamo_counters

PROMPT_TOKENS = HybridConfig().num_virtual_tokens
PLAIN_LONGER = f"plain base, source + {PROMPT_TOKENS} tokens"
FAST = ", fast_generation"  # suffix of the rows run under fast_generation
MERGED = "peft_hybrid hybrid merged"

COLUMNS = [
    "variant",
    "median_s",
    "min_s",
    "new_tokens_per_s",
    "ratio_vs",
    "ratio_vs_base",
    "paired_vs_stock",
    "paired_vs_base",
    "paired_vs_same_length",
    "paired_vs_eager",
    "compile_call_s",
    "gflops",
    "work_vs_base",
    "peak_mib",
    "same_tokens_as_eager",
    "error",
]


def ours(base: torch.nn.Module, bf16_base: bool = False) -> HybridModel:
    model = HybridModel(base, HybridConfig(mode="hybrid"))
    # A trained-looking adapter (B != 0), so merging changes the weights for real.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, p in model.adapter_tensors().items():
            if "lora_B" in key:
                p.copy_(torch.randn(p.shape, generator=g).mul_(0.02))
    return cast_frozen_base_(model, torch.bfloat16) if bf16_base else model


def prepare_generate(
    build: Callable[[torch.nn.Module], torch.nn.Module],
    shape: Shape,
    device: str,
    bf16: bool,
    merged: bool = False,
    fast: str | None = None,
) -> tuple[Callable[[], torch.Tensor], dict[str, Any]]:
    """A variant's timed call; ``fast`` is the compile backend of `fast_generation` (None: eager decoding)."""
    base, _ = build_base(shape, device)
    model = build(base).eval()
    batch = make_batch(shape, device)
    kwargs = dict(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        max_new_tokens=shape.new_tokens,
        min_new_tokens=shape.new_tokens,
        do_sample=False,
        num_beams=1,
    )

    def generate() -> torch.Tensor:
        with torch.no_grad(), autocast(device, bf16), contextlib.ExitStack() as stack:
            if merged:
                stack.enter_context(merged_lora(model))
            if fast:
                stack.enter_context(fast_generation(model, backend=fast))
            return model.generate(**kwargs)

    # Counting FLOPs would trace the compiled path under a dispatch mode; the work equals the eager twin's.
    info: dict[str, Any] = {} if fast else {"gflops": count_gflops(generate)}
    if merged or fast:
        with torch.no_grad(), autocast(device, bf16):
            eager = model.generate(**kwargs)
        start = time.perf_counter()
        info["same_tokens_as_eager"] = bool(torch.equal(generate(), eager))
        if fast:  # this first call holds the compile
            info["compile_call_s"] = time.perf_counter() - start
    return generate, info


def count_gflops(generate: Callable[[], torch.Tensor]) -> float:
    """Matmul GFLOPs of one ``generate()`` call (``torch.utils.flop_counter``): the work a variant
    does, independent of how fast the machine runs it."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        generate()
    return counter.get_total_flops() / 1e9


def variants(
    shape: Shape, device: str, bf16: bool, fast: bool, compiled: bool = False, fast_backend: str | None = None
) -> dict[str, Callable[[], tuple]]:
    def prepare(build, merged=False, fast_path=None):
        return lambda: prepare_generate(build, shape, device, bf16, merged, fast_path)

    # Control: the plain base reading as many encoder positions as the hybrid does (source + the
    # 30 prompt tokens). Against it, what remains of the hybrid's cost is its own overhead.
    longer = dataclasses.replace(shape, src=shape.src + PROMPT_TOKENS)
    out = {
        "plain base": prepare(lambda base: base),
        PLAIN_LONGER: lambda: prepare_generate(lambda base: base, longer, device, bf16),
        STOCK_HYBRID: prepare(stock_hybrid),
        "peft_hybrid hybrid unmerged": prepare(ours),
        MERGED: prepare(ours, merged=True),
    }
    if fast:
        out["peft_hybrid hybrid merged bf16-base"] = prepare(lambda base: ours(base, bf16_base=True), merged=True)
    if compiled:
        out["peft_hybrid hybrid merged+compile"] = prepare(lambda base: compile_model(ours(base)), merged=True)
    if fast_backend:
        # Like for like: the baselines take the same fast path as the hybrid.
        out["plain base" + FAST] = prepare(lambda base: base, fast_path=fast_backend)
        out[STOCK_HYBRID + FAST] = prepare(stock_hybrid, fast_path=fast_backend)
        out[MERGED + FAST] = prepare(ours, merged=True, fast_path=fast_backend)
    return out


def run(
    shape: Shape,
    device: str,
    bf16: bool,
    fast: bool,
    warmup: int,
    reps: int,
    deadline: float,
    compiled: bool = False,
    fast_backend: str | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """The generation variants (all, or those named in ``only``), interleaved; rows with new tokens/s and ratios."""
    before = dynamo_counters()
    prepares = variants(shape, device, bf16, fast, compiled, fast_backend)
    if only:
        unknown = sorted(set(only) - set(prepares))
        if unknown:
            raise SystemExit(f"--only {unknown}: no such variant; pick from {sorted(prepares)}.")
        prepares = {name: prepare for name, prepare in prepares.items() if name in only}
    rows = run_interleaved(prepares, device, warmup, reps, deadline)
    for row in rows:
        if "median_s" in row:
            row["new_tokens_per_s"] = shape.batch * shape.new_tokens / row["median_s"]
    add_generation_ratios(rows)
    dynamo = {"before": before, "after": dynamo_counters()}
    return {"rows": rows, "table": markdown_table(rows, COLUMNS), "dynamo": dynamo}


def add_generation_ratios(rows: list[dict]) -> None:
    """Throughput ratios (> 1 is faster) vs the stock hybrid, the plain base and the plain base
    at the hybrid's encoder length: of the medians, and paired (median of the per-rep ratios,
    the steadier figure on a shared box). A fast_generation row is compared with the fast rows
    of the baselines, and with its own eager twin (``paired_vs_eager``)."""
    by_name = {r["variant"]: r for r in rows}
    names = [r["variant"] for r in rows if r["variant"].startswith("peft_hybrid")]
    suffix = {n: FAST if n.endswith(FAST) else "" for n in (*names, "plain base")}
    add_ratios(rows, "new_tokens_per_s", {n: STOCK_HYBRID + suffix[n] for n in names}, paired_key="paired_vs_stock")
    for row in rows:
        name = row["variant"]
        if name.endswith(FAST):
            row["paired_vs_eager"] = paired_speedup(row, by_name.get(name[: -len(FAST)], {}))
        base = by_name.get("plain base" + (FAST if name.endswith(FAST) else ""), {})
        if row is base:
            continue
        if "new_tokens_per_s" in row and "new_tokens_per_s" in base:
            row["ratio_vs_base"] = row["new_tokens_per_s"] / base["new_tokens_per_s"]
        row["paired_vs_base"] = paired_speedup(row, base)
        if name in names and not name.endswith(FAST):
            # Against the base reading as many positions: 1.0 means no overhead beyond the prompt's length.
            row["paired_vs_same_length"] = paired_speedup(row, by_name.get(PLAIN_LONGER, {}))
        # Matmul work relative to the plain base: what the soft prompt (and unmerged LoRA) add.
        if base.get("gflops") and row.get("gflops"):
            row["work_vs_base"] = row["gflops"] / base["gflops"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="Add the merged bf16-base variant.")
    parser.add_argument(
        "--compile", action="store_true", help="Add the merged variant with compiled stacks (inductor)."
    )
    parser.add_argument(
        "--fast-generation",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="Add the plain base, stock hybrid and merged hybrid under fast_generation (backend, default inductor).",
    )
    parser.add_argument("--new-tokens", type=int, default=None, help="Tokens per example (default: the shape's).")
    parser.add_argument("--only", action="append", default=None, help="Run only this variant (repeatable).")
    args = parser.parse_args(argv)
    setup(args.device, args.threads)
    shape = SHAPES[args.shape]
    if args.new_tokens is not None:
        shape = dataclasses.replace(shape, new_tokens=args.new_tokens)
    bf16 = args.bf16 or args.device == "cuda"
    fast = args.fast or args.device == "cuda"
    deadline = time.monotonic() + args.budget
    result = run(
        shape, args.device, bf16, fast, args.warmup, args.reps, deadline, args.compile, args.fast_generation, args.only
    )
    log(f"generation, shape={args.shape} {shape}, bf16 autocast={bf16}\n{result['table']}")
    write_results(args.out, {"shape": args.shape, "geometry": vars(shape), "bf16": bf16, **result})
    return result["rows"]


if __name__ == "__main__":
    main()
