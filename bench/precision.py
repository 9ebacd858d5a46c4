"""Is a bf16 frozen base safe? Loss curves of the same training run in three precisions.

Trains peft_hybrid ``hybrid`` on synthetic dialogue→summary pairs for ``--steps`` AdamW steps
(lr 1e-3, wd 1e-3 as in the paper), from the same initial weights and batches, as:
``fp32`` (no autocast: the reference), ``fp32 master + bf16 autocast`` (the usual mixed
precision) and ``bf16 frozen base + bf16 autocast`` (`peft_hybrid.training.speed.cast_frozen_base_`;
LoRA and prompt stay fp32). Dropout is off so that only precision differs between runs.

    python bench/precision.py --shape tiny --steps 150 --out bench/results/precision_tiny.json
"""

from __future__ import annotations

import time

import torch
from _common import SHAPES, autocast, build_base, log, make_parser, setup, write_results

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.offline.synthetic import dialogue_summary_pairs
from peft_hybrid.training.speed import cast_frozen_base_

VARIANTS = {
    "fp32": (False, False),
    "fp32 master + bf16 autocast": (True, False),
    "bf16 frozen base + bf16 autocast": (True, True),
}


def batches(tokenizer, n_batches: int, batch_size: int, src: int, tgt: int, device: str) -> list[dict]:
    pairs = dialogue_summary_pairs(n_batches * batch_size, seed=0)
    out = []
    for i in range(n_batches):
        chunk = pairs[i * batch_size : (i + 1) * batch_size]
        enc = tokenizer(
            [p["dialogue"] for p in chunk], max_length=src, truncation=True, padding=True, return_tensors="pt"
        )
        labels = tokenizer(
            [p["summary"] for p in chunk], max_length=tgt, truncation=True, padding=True, return_tensors="pt"
        ).input_ids
        labels[labels == tokenizer.pad_token_id] = -100
        out.append(
            {
                "input_ids": enc.input_ids.to(device),
                "attention_mask": enc.attention_mask.to(device),
                "labels": labels.to(device),
            }
        )
    return out


def train_curve(shape, device: str, data: list[dict], steps: int, use_autocast: bool, bf16_base: bool) -> list[float]:
    base, _ = build_base(shape, device)
    base.config.dropout_rate = 0.0
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model = HybridModel(base, HybridConfig(mode="hybrid", lora_dropout=0.0))
    if bf16_base:
        cast_frozen_base_(model, torch.bfloat16)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)
    losses = []
    for step in range(steps):
        with autocast(device, use_autocast):
            loss = model(**data[step % len(data)]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    setup(args.device, args.threads)
    shape = SHAPES[args.shape]
    _, tokenizer = build_base(shape, "cpu")
    data = batches(tokenizer, 20, shape.batch, shape.src, shape.tgt, args.device)
    curves, seconds = {}, {}
    for name, (use_autocast, bf16_base) in VARIANTS.items():
        start = time.perf_counter()
        curves[name] = train_curve(shape, args.device, data, args.steps, use_autocast, bf16_base)
        seconds[name] = time.perf_counter() - start
        log(f"{name}: first {curves[name][0]:.4f} last {curves[name][-1]:.4f} ({seconds[name]:.1f}s)")
    ref = curves["fp32"]
    rows = []
    for name, curve in curves.items():
        diffs = [abs(a - b) for a, b in zip(curve, ref)]
        tail = curve[-10:]
        rows.append(
            {
                "variant": name,
                "first_loss": curve[0],
                "mean_last10": sum(tail) / len(tail),
                "max_abs_diff_vs_fp32": max(diffs),
                "max_abs_diff_vs_mixed": max(abs(a - b) for a, b in zip(curve, curves["fp32 master + bf16 autocast"])),
            }
        )
    checkpoints = sorted({0, 9, 24, 49, 99, args.steps - 1} & set(range(args.steps)))
    table = "\n".join(
        [
            "| variant | "
            + " | ".join(f"step {s + 1}" for s in checkpoints)
            + " | mean last 10 | max abs diff vs fp32 | vs mixed |",
            "|---|" + "---|" * (len(checkpoints) + 3),
        ]
        + [
            f"| {r['variant']} | "
            + " | ".join(f"{curves[r['variant']][s]:.4f}" for s in checkpoints)
            + f" | {r['mean_last10']:.4f} | {r['max_abs_diff_vs_fp32']:.4f} | {r['max_abs_diff_vs_mixed']:.4f} |"
            for r in rows
        ]
    )
    log(f"loss curves, shape={args.shape}, {args.steps} steps\n{table}")
    payload = {
        "shape": args.shape,
        "steps": args.steps,
        "rows": rows,
        "curves": curves,
        "seconds": seconds,
        "table": table,
    }
    write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
