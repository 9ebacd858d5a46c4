"""Mixed-task batches: one batch, one adapter per row, against one adapter for all rows and against
running each adapter's rows as its own sub-batch; LoRA-only rows against stock PEFT's ``adapter_names``.

Every variant generates greedily exactly ``new_tokens`` per row (``min_new_tokens=max_new_tokens``)
for the same ``batch`` rows; the rows name ``adapters`` adapters in turn (row ``i`` uses adapter
``i % adapters``). Variants are timed round-robin and compared by paired ratios (the median over
reps of the per-rep time ratio; > 1 means faster). The mixed variants check that their tokens
equal the sub-batch variant's, row for row.

    python bench/mixed_batch.py --shape small --reps 5 --out bench/results/mixed_batch_small_cpu.json

The ``, fast_generation`` variant times ``with fast_generation(model): model.generate(...)`` whole
(static KV cache, compiled encoder and decoder step with the per-row LoRA inside) against the eager
mixed batch; its tokens must equal the eager mixed batch's. ``--fast-geometry`` runs the fast
path's target geometry instead (small: batch 16, source 256, 32 new tokens).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import SHAPES, Shape, build_base, log, make_batch, make_parser, markdown_table, run_interleaved, setup
from _common import paired_speedup as paired
from _common import write_results as write
from peft import LoraConfig, get_peft_model

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.inference import fast_generation
from peft_hybrid.training.speed import dynamo_counters

# The geometry at the small CPU shape: batch 32, source 128, 32 new tokens, 8 adapters.
GEOMETRY = {
    "tiny": dataclasses.replace(SHAPES["tiny"], batch=16, src=32, new_tokens=4),
    "small": dataclasses.replace(SHAPES["small"], batch=32, src=128, new_tokens=32),
}
# The fast-generation target's geometry (issue: small shape, batch 16, 256 -> 32 greedy).
FAST_GEOMETRY = {"tiny": GEOMETRY["tiny"], "small": dataclasses.replace(SHAPES["small"], new_tokens=32)}
ADAPTERS = 8
COLUMNS = ["variant", "median_s", "min_s", "new_tokens_per_s", "paired_ratio", "target", "same_tokens", "error"]
# (variant, reference, target): the variant's paired throughput ratio over the reference must reach it.
TARGETS = [
    ("ours hybrid mixed", "ours hybrid one adapter (unmerged)", 0.85),
    ("ours hybrid mixed", "ours hybrid 8 sub-batches (set_adapter)", 2.5),
    ("ours lora mixed", "stock PEFT lora mixed (adapter_names)", 1.1),
    ("ours hybrid mixed, fast_generation", "ours hybrid mixed", 1.3),
    # The anchor, remeasured: stock PEFT's own mixed batch against its one-adapter and sub-batch runs.
    ("stock PEFT lora mixed (adapter_names)", "stock PEFT lora one adapter", None),
    ("stock PEFT lora mixed (adapter_names)", "stock PEFT lora 8 sub-batches (set_adapter)", None),
]


def _randomize(tensors: list[torch.Tensor], seed: int) -> None:
    """Trained-looking adapters (LoRA B != 0), a different one per adapter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.add_(torch.randn(t.shape, generator=g).mul_(0.02))


def ours(base: torch.nn.Module, mode: str) -> HybridModel:
    model = HybridModel(base, HybridConfig(mode=mode), adapter_name="t0")
    for i in range(1, ADAPTERS):
        model.add_adapter(f"t{i}", HybridConfig(mode=mode, seed=i))
    _randomize(model.all_adapter_tensors(), 1)
    return model.eval()


def stock(base: torch.nn.Module) -> torch.nn.Module:
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["q", "v"], lora_dropout=0.05, task_type="SEQ_2_SEQ_LM")
    model = get_peft_model(base, config, adapter_name="t0")
    for i in range(1, ADAPTERS):
        model.add_adapter(f"t{i}", config)
    _randomize([p for n, p in model.named_parameters() if "lora_" in n], 1)
    return model.eval()


def prepare(library: str, mode: str, how: str, shape: Shape, device: str) -> tuple[Callable[[], Any], dict]:
    """``how``: ``mixed`` (one batch, a name per row), ``fast`` (the same inside ``fast_generation``),
    ``one`` (every row adapter t0, unmerged), ``sub`` (each adapter's rows as a batch of their own,
    after ``set_adapter``)."""
    base, _ = build_base(shape, device)
    model = ours(base, mode) if library == "ours" else stock(base)
    batch = make_batch(shape, device)
    names = [f"t{i % ADAPTERS}" for i in range(shape.batch)]
    settings = dict(max_new_tokens=shape.new_tokens, min_new_tokens=shape.new_tokens, do_sample=False, num_beams=1)
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def mixed() -> torch.Tensor:
        return model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, **settings)

    def one() -> torch.Tensor:
        model.set_adapter("t0")
        return model.generate(input_ids=ids, attention_mask=mask, **settings)

    def sub() -> torch.Tensor:
        out = torch.empty(shape.batch, shape.new_tokens + 1, dtype=torch.long, device=device)
        for i in range(ADAPTERS):
            model.set_adapter(f"t{i}")
            out[i::ADAPTERS] = model.generate(input_ids=ids[i::ADAPTERS], attention_mask=mask[i::ADAPTERS], **settings)
        return out

    def fast() -> torch.Tensor:
        with fast_generation(model):  # compiled on the first call, reused by every later block
            return mixed()

    call = {"mixed": mixed, "fast": fast, "one": one, "sub": sub}[how]

    def timed() -> torch.Tensor:
        with torch.no_grad():
            return call()

    info: dict[str, Any] = {}
    if how in ("mixed", "fast"):
        with torch.no_grad():
            start = time.perf_counter()
            info["same_tokens"] = bool(torch.equal(call(), mixed() if how == "fast" else sub()))
            if how == "fast":
                info["compile_and_first_call_s"] = time.perf_counter() - start
    return timed, info


def variants(shape: Shape, device: str) -> dict[str, Callable[[], tuple]]:
    def v(library, mode, how):
        return lambda: prepare(library, mode, how, shape, device)

    return {
        "ours hybrid mixed": v("ours", "hybrid", "mixed"),
        "ours hybrid mixed, fast_generation": v("ours", "hybrid", "fast"),
        "ours hybrid one adapter (unmerged)": v("ours", "hybrid", "one"),
        "ours hybrid 8 sub-batches (set_adapter)": v("ours", "hybrid", "sub"),
        "ours lora mixed": v("ours", "lora", "mixed"),
        "stock PEFT lora mixed (adapter_names)": v("stock", "lora", "mixed"),
        "stock PEFT lora one adapter": v("stock", "lora", "one"),
        "stock PEFT lora 8 sub-batches (set_adapter)": v("stock", "lora", "sub"),
    }


def run(shape: Shape, device: str, warmup: int, reps: int, deadline: float, only: str | None = None) -> dict[str, Any]:
    chosen = {k: v for k, v in variants(shape, device).items() if only is None or only in k}
    rows = run_interleaved(chosen, device, warmup, reps, deadline)
    for row in rows:
        if "median_s" in row:
            row["new_tokens_per_s"] = shape.batch * shape.new_tokens / row["median_s"]
    by_name = {r["variant"]: r for r in rows}
    ratios = []
    for name, reference, target in TARGETS:
        ratio = paired(by_name[name], by_name[reference]) if name in by_name and reference in by_name else None
        met = None if ratio is None or target is None else ratio >= target
        ratios.append({"variant": name, "reference": reference, "paired_ratio": ratio, "target": target, "met": met})
    table = markdown_table(rows, COLUMNS[:4] + COLUMNS[-2:])
    ratio_table = markdown_table(ratios, ["variant", "reference", "paired_ratio", "target", "met"])
    return {"rows": rows, "ratios": ratios, "table": table, "ratio_table": ratio_table}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(__doc__.splitlines()[0])
    parser.set_defaults(shape="small")
    parser.add_argument("--only", default=None, help="Run only the variants whose name contains this text.")
    parser.add_argument("--fast-geometry", action="store_true", help="The fast-generation target's geometry.")
    args = parser.parse_args(argv)
    if args.shape not in GEOMETRY:
        parser.error(f"--shape {args.shape}: this bench runs at {sorted(GEOMETRY)}.")
    setup(args.device, args.threads)
    shape = (FAST_GEOMETRY if args.fast_geometry else GEOMETRY)[args.shape]
    result = run(shape, args.device, args.warmup, args.reps, time.monotonic() + args.budget, args.only)
    log(
        f"mixed batches, shape={args.shape} {shape}, {ADAPTERS} adapters\n{result['table']}\n\n{result['ratio_table']}"
    )
    result["dynamo"] = dynamo_counters()  # graph breaks and graphs compiled over the run (the fast variant's)
    log(f"dynamo: {result['dynamo']}")
    write(args.out, {"shape": args.shape, "geometry": dataclasses.asdict(shape), "adapters": ADAPTERS, **result})
    return result


if __name__ == "__main__":
    main()
