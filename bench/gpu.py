"""The GPU run: train step and generation at the FLAN-T5-base shape, in one bounded command.

Runs `train_step` (stock PEFT LoRA, peft_hybrid lora, stock hand-assembled hybrid,
peft_hybrid hybrid, peft_hybrid hybrid with bf16 frozen base + compile) and `generation`
(plain base, stock hybrid, peft_hybrid unmerged / merged / merged on a bf16 base) at batch 64,
source 512 / target 128, bf16 autocast, 64 new tokens. Every variant is guarded: an error is
recorded in the results and the run goes on; a global time budget (default 270 s) skips what
no longer fits. Writes ``results.json`` and ``results.md`` to ``--out``.

    python bench/gpu.py --shape flan-t5-base --device cuda --out bench/results/gpu

A CPU smoke run of the same code path:

    python bench/gpu.py --shape tiny --device cpu --compile-backend eager --out /tmp/gpu-smoke
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import generation
import train_step
from _common import SHAPES, environment, log, setup


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="flan-t5-base")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="Folder for results.json and results.md.")
    parser.add_argument("--budget", type=float, default=270.0, help="Seconds for the whole run.")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--train-reps", type=int, default=10)
    parser.add_argument("--gen-reps", type=int, default=3)
    parser.add_argument("--compile-backend", default="inductor", help="'eager' makes a CPU smoke run quick.")
    args = parser.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget
    setup(args.device)
    shape = SHAPES[args.shape]
    bf16 = args.device == "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"environment": environment(), "shape": args.shape, "geometry": vars(shape), "bf16": bf16}
    log(f"gpu bench: shape={args.shape} {shape} device={args.device} bf16={bf16} budget={args.budget}s")
    # Training gets ~70% of the budget (it holds the compile), generation the rest.
    sections = (
        ("train", lambda: train_step.run(
            shape, args.device, bf16, True, args.warmup, args.train_reps, start + 0.7 * args.budget, args.compile_backend
        )),
        ("generation", lambda: generation.run(shape, args.device, bf16, True, 1, args.gen_reps, deadline)),
    )
    for name, section in sections:
        try:
            results[name] = section()
            log(f"{name}:\n{results[name]['table']}")
        except Exception as err:  # keep whatever the other section measured
            results[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
            log(f"{name}: FAILED {results[name]['error']}")
        _write(args.out, results, start)
    return results


def _write(folder: Path, results: dict, start: float) -> None:
    results["elapsed_s"] = time.monotonic() - start
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    lines = [
        f"# GPU bench ({results['environment'].get('gpu', 'cpu')}, shape {results['shape']}, {results['elapsed_s']:.0f} s)",
        "",
        "train `ratio_vs`: step time over the reference's (< 1 is faster); generation `ratio_vs` and",
        "`ratio_vs_base`: new tokens/s over the reference's (> 1 is faster). Memory: `peak_mib`.",
        "",
    ]
    for name in ("train", "generation"):
        if name in results:
            lines += [f"## {name}", "", results[name].get("table") or results[name].get("error", ""), ""]
    (folder / "results.md").write_text("\n".join(lines), encoding="utf-8")
    log(f"wrote {folder}/results.json and results.md ({results['elapsed_s']:.0f} s so far)")


if __name__ == "__main__":
    main()
