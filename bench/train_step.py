"""Train step (forward + backward + AdamW step): peft_hybrid vs stock PEFT, same shape and batch.

Variants: stock PEFT LoRA (``get_peft_model``) vs peft_hybrid mode ``lora``; the stock hybrid
assembled by hand (LoRA injected, then a PEFT prompt-tuning model around it, LoRA grads turned
back on) vs peft_hybrid mode ``hybrid``; with ``--fast`` (default on cuda) also peft_hybrid
hybrid with the frozen base in bf16 and the stacks compiled. Also times the soft-prompt join.

    python bench/train_step.py --shape small --device cpu --reps 7 --out bench/results/train_small.json
"""

from __future__ import annotations

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
    run_interleaved,
    setup,
    summarize,
    time_reps,
    write_results,
)
from peft import LoraConfig, PromptTuningConfig, get_peft_model, inject_adapter_in_model

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.training.speed import cast_frozen_base_, compile_model, dynamo_counters

PAPER_LORA = dict(r=4, lora_alpha=4, target_modules=["q", "v"], lora_dropout=0.05)
COLUMNS = [
    "variant",
    "median_s",
    "min_s",
    "samples_per_s",
    "ratio_vs",
    "paired_speedup",
    "peak_mib",
    "first_call_s",
    "trainable",
    "error",
]


def stock_lora(base: torch.nn.Module) -> torch.nn.Module:
    return get_peft_model(base, LoraConfig(task_type="SEQ_2_SEQ_LM", **PAPER_LORA))


def stock_hybrid(base: torch.nn.Module) -> torch.nn.Module:
    """What a user of stock PEFT has to assemble by hand to get LoRA + an encoder prompt."""
    inject_adapter_in_model(LoraConfig(**PAPER_LORA), base)
    c = base.config
    model = get_peft_model(
        base,
        PromptTuningConfig(
            task_type="SEQ_2_SEQ_LM",
            num_virtual_tokens=30,
            num_transformer_submodules=1,
            token_dim=c.d_model,
            num_attention_heads=c.num_heads,
            num_layers=c.num_layers,
        ),
    )
    for name, p in model.named_parameters():
        if "lora_" in name:  # get_peft_model froze the injected LoRA weights
            p.requires_grad_(True)
    return model


def ours(mode: str) -> Callable[[torch.nn.Module], torch.nn.Module]:
    return lambda base: HybridModel(base, HybridConfig(mode=mode))


def ours_fast(backend: str = "inductor") -> Callable[[torch.nn.Module], torch.nn.Module]:
    def build(base: torch.nn.Module) -> torch.nn.Module:
        # Every benchmark batch has the same shape: compile static shapes. With dynamic=True the
        # inductor compile of the flan-t5-base stacks at batch 64 x 512/128 had not finished
        # after 6 minutes on an H100.
        model = cast_frozen_base_(HybridModel(base, HybridConfig(mode="hybrid")), torch.bfloat16)
        return compile_model(model, dynamic=False, backend=backend)

    return build


def prepare_train(
    build: Callable[[torch.nn.Module], torch.nn.Module], shape: Shape, device: str, bf16: bool
) -> tuple[Callable[[], None], dict[str, Any]]:
    base, _ = build_base(shape, device)
    model = build(base).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-3)
    batch = make_batch(shape, device)

    def step() -> None:
        with autocast(device, bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, {"trainable": sum(p.numel() for p in params)}


def measure_prepend(shape: Shape, device: str, reps: int = 50) -> dict[str, Any]:
    """The soft-prompt join as the library does it (expand + cat) vs a repeat-based join."""
    base, _ = build_base(shape, device)
    model = HybridModel(base, HybridConfig(mode="hybrid"))
    batch = make_batch(shape, device)
    embeds = base.get_input_embeddings()(batch["input_ids"]).detach()
    mask = batch["attention_mask"]
    weight = model.prompt.weight

    def repeat_join() -> None:
        prompt = weight.unsqueeze(0).repeat(embeds.shape[0], 1, 1)
        torch.cat([prompt, embeds], 1), torch.cat([mask.new_ones(mask.shape[0], weight.shape[0]), mask], 1)

    with torch.no_grad():
        expand = summarize(time_reps(lambda: model.prompt.prepend(embeds, mask), device, 5, reps))
        repeat = summarize(time_reps(repeat_join, device, 5, reps))
        view = model.prompt.weight.expand(embeds.shape[0], -1, -1)
    return {
        "expand_cat_median_us": expand["median_s"] * 1e6,
        "repeat_cat_median_us": repeat["median_s"] * 1e6,
        "expand_shares_storage": view.data_ptr() == weight.data_ptr(),
    }


STOCK_HYBRID = "stock hybrid (hand-assembled)"
FAST = "peft_hybrid hybrid bf16-base+compile"


def variants(
    shape: Shape, device: str, bf16: bool, fast: bool, backend: str = "inductor", only: list[str] | None = None
) -> dict[str, Callable[[], tuple]]:
    builds = {
        "stock PEFT LoRA": stock_lora,
        "peft_hybrid lora": ours("lora"),
        STOCK_HYBRID: stock_hybrid,
        "peft_hybrid hybrid": ours("hybrid"),
    }
    if fast:
        builds[FAST] = ours_fast(backend)
    if only:
        unknown = sorted(set(only) - set(builds))
        if unknown:
            raise SystemExit(
                f"--only {unknown}: not a variant here; choose from {sorted(builds)} (add --fast for {FAST!r})."
            )
        builds = {name: build for name, build in builds.items() if name in only}
    return {name: (lambda b=b: prepare_train(b, shape, device, bf16)) for name, b in builds.items()}


def run(
    shape: Shape,
    device: str,
    bf16: bool,
    fast: bool,
    warmup: int,
    reps: int,
    deadline: float,
    backend: str = "inductor",
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Train variants (all, or those named in ``only``), interleaved; rows with samples/s,
    ratios and compile counts."""
    before = dynamo_counters()
    rows = run_interleaved(variants(shape, device, bf16, fast, backend, only), device, warmup, reps, deadline)
    after = dynamo_counters()
    for row in rows:
        if "median_s" in row:
            row["samples_per_s"] = shape.batch / row["median_s"]
    # Time per step, so a ratio < 1 means faster than the reference; the paired speedup
    # (median of per-rep reference/variant time ratios) is > 1 when faster.
    add_ratios(rows, "median_s", ratio_pairs(fast))
    return {"rows": rows, "dynamo": {"before": before, "after": after}, "table": markdown_table(rows, COLUMNS)}


def ratio_pairs(fast: bool) -> dict[str, str]:
    pairs = {"peft_hybrid lora": "stock PEFT LoRA", "peft_hybrid hybrid": STOCK_HYBRID}
    if fast:
        pairs[FAST] = STOCK_HYBRID
    return pairs


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="Add the bf16-frozen-base + compile variant.")
    parser.add_argument("--only", action="append", metavar="VARIANT", help="Run only this variant (repeatable).")
    parser.add_argument("--compile-backend", default="inductor", help="'eager' checks the compiled path quickly.")
    parser.add_argument("--no-prompt-join", action="store_true", help="Skip the soft-prompt join timing.")
    args = parser.parse_args(argv)
    setup(args.device, args.threads)
    shape = SHAPES[args.shape]
    bf16 = args.bf16 or args.device == "cuda"
    fast = args.fast or args.device == "cuda"
    deadline = time.monotonic() + args.budget
    result = run(shape, args.device, bf16, fast, args.warmup, args.reps, deadline, args.compile_backend, args.only)
    prepend = None if args.no_prompt_join else measure_prepend(shape, args.device)
    log(f"train step, shape={args.shape} {shape}, bf16 autocast={bf16}\n{result['table']}\nprompt join: {prepend}")
    write_results(
        args.out, {"shape": args.shape, "geometry": vars(shape), "bf16": bf16, **result, "prompt_join": prepend}
    )
    return result["rows"]


if __name__ == "__main__":
    main()
