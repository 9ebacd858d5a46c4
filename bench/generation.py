"""Greedy generation throughput: plain base, stock hybrid, peft_hybrid unmerged and merged.

Every variant generates exactly ``new_tokens`` per example (``min_new_tokens=max_new_tokens``),
so new tokens/s compare like for like. The merged variant times ``with merged_lora(model):
model.generate(...)`` whole (the merge is inside the timing) and checks its tokens against the
unmerged model's. With ``--fast`` (default on cuda) also the merged model on a bf16 base; with
``--compile`` also the merged model with its stacks compiled (`compile_model`, the compile is
in the first call, outside the timed reps).

    python bench/generation.py --shape small --device cpu --reps 5 --out bench/results/gen_small.json
"""

from __future__ import annotations

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
from peft_hybrid.speed import cast_frozen_base_, compile_model, merged_lora

PROMPT_TOKENS = HybridConfig().num_virtual_tokens
PLAIN_LONGER = f"plain base, source + {PROMPT_TOKENS} tokens"

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
    "gflops",
    "work_vs_base",
    "peak_mib",
    "same_tokens_as_unmerged",
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
    build: Callable[[torch.nn.Module], torch.nn.Module], shape: Shape, device: str, bf16: bool, merged: bool = False
) -> tuple[Callable[[], torch.Tensor], dict[str, Any]]:
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
        with torch.no_grad(), autocast(device, bf16):
            if merged:
                with merged_lora(model):
                    return model.generate(**kwargs)
            return model.generate(**kwargs)

    info: dict[str, Any] = {"gflops": count_gflops(generate)}
    if merged:
        with torch.no_grad(), autocast(device, bf16):
            unmerged = model.generate(**kwargs)
        info["same_tokens_as_unmerged"] = bool(torch.equal(generate(), unmerged))
    return generate, info


def count_gflops(generate: Callable[[], torch.Tensor]) -> float:
    """Matmul GFLOPs of one ``generate()`` call (``torch.utils.flop_counter``): the work a variant
    does, independent of how fast the machine runs it."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        generate()
    return counter.get_total_flops() / 1e9


def variants(
    shape: Shape, device: str, bf16: bool, fast: bool, compiled: bool = False
) -> dict[str, Callable[[], tuple]]:
    def prepare(build, merged=False):
        return lambda: prepare_generate(build, shape, device, bf16, merged)

    # Control: the plain base reading as many encoder positions as the hybrid does (source + the
    # 30 prompt tokens). Against it, what remains of the hybrid's cost is its own overhead.
    longer = dataclasses.replace(shape, src=shape.src + PROMPT_TOKENS)
    out = {
        "plain base": prepare(lambda base: base),
        PLAIN_LONGER: lambda: prepare_generate(lambda base: base, longer, device, bf16),
        STOCK_HYBRID: prepare(stock_hybrid),
        "peft_hybrid hybrid unmerged": prepare(ours),
        "peft_hybrid hybrid merged": prepare(ours, merged=True),
    }
    if fast:
        out["peft_hybrid hybrid merged bf16-base"] = prepare(lambda base: ours(base, bf16_base=True), merged=True)
    if compiled:
        out["peft_hybrid hybrid merged+compile"] = prepare(lambda base: compile_model(ours(base)), merged=True)
    return out


def run(
    shape: Shape, device: str, bf16: bool, fast: bool, warmup: int, reps: int, deadline: float, compiled: bool = False
) -> dict[str, Any]:
    """All generation variants, interleaved; rows with new tokens/s and ratios."""
    rows = run_interleaved(variants(shape, device, bf16, fast, compiled), device, warmup, reps, deadline)
    for row in rows:
        if "median_s" in row:
            row["new_tokens_per_s"] = shape.batch * shape.new_tokens / row["median_s"]
    add_generation_ratios(rows)
    return {"rows": rows, "table": markdown_table(rows, COLUMNS)}


def add_generation_ratios(rows: list[dict]) -> None:
    """Throughput ratios (> 1 is faster) vs the stock hybrid, the plain base and the plain base
    at the hybrid's encoder length: of the medians, and paired (median of the per-rep ratios,
    the steadier figure on a shared box)."""
    names = [r["variant"] for r in rows if r["variant"].startswith("peft_hybrid")]
    add_ratios(rows, "new_tokens_per_s", {n: STOCK_HYBRID for n in names}, paired_key="paired_vs_stock")
    by_name = {r["variant"]: r for r in rows}
    base, same_length = by_name.get("plain base", {}), by_name.get(PLAIN_LONGER, {})
    for row in rows:
        if row is base:
            continue
        if "new_tokens_per_s" in row and "new_tokens_per_s" in base:
            row["ratio_vs_base"] = row["new_tokens_per_s"] / base["new_tokens_per_s"]
        row["paired_vs_base"] = paired_speedup(row, base)
        if row["variant"] in names:
            # Against the base reading as many positions: 1.0 means no overhead beyond the prompt's length.
            row["paired_vs_same_length"] = paired_speedup(row, same_length)
        # Matmul work relative to the plain base: what the soft prompt (and unmerged LoRA) add.
        if base.get("gflops") and row.get("gflops"):
            row["work_vs_base"] = row["gflops"] / base["gflops"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="Add the merged bf16-base variant.")
    parser.add_argument(
        "--compile", action="store_true", help="Add the merged variant with compiled stacks (inductor)."
    )
    args = parser.parse_args(argv)
    setup(args.device)
    shape = SHAPES[args.shape]
    bf16 = args.bf16 or args.device == "cuda"
    fast = args.fast or args.device == "cuda"
    result = run(shape, args.device, bf16, fast, args.warmup, args.reps, time.monotonic() + args.budget, args.compile)
    log(f"generation, shape={args.shape} {shape}, bf16 autocast={bf16}\n{result['table']}")
    write_results(args.out, {"shape": args.shape, "geometry": vars(shape), "bf16": bf16, **result})
    return result["rows"]


if __name__ == "__main__":
    main()
