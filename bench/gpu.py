"""The GPU run: train step and generation at the FLAN-T5-base shape, in one bounded command.

Three sections, each written to ``--out`` as soon as it is done:

1. ``train``: stock PEFT LoRA, peft_hybrid lora, stock hand-assembled hybrid, peft_hybrid
   hybrid, eager, interleaved rep by rep.
2. ``generation``: plain base, stock hybrid, peft_hybrid unmerged / merged / merged on a bf16
   base, then the plain base, the stock hybrid and the merged hybrid under ``fast_generation``
   (static KV cache, compiled steps, CUDA graphs), the shape's target length of new tokens
   (128 at the FLAN-T5-base shape).
3. ``quantized`` (`quantized.run_gpu`): the QLoRA-hybrid train step (time, peak memory) on an
   NF4 base vs the bf16-base step, and mixed-batch generation tokens/s on each (skipped on CPU).
4. ``compiled``: peft_hybrid hybrid with the frozen base in bf16 and the stacks compiled,
   interleaved with the stock hybrid again, in a child process under a hard timeout (what is
   left of ``--budget``). A compile that runs long is killed there and recorded as such; it
   cannot eat the time of the eager sections, which already ran.
5. ``serving`` (`serve.run_serving`): ``peft-hybrid serve`` as processes, closed-loop tokens/s at
   ``--serving-clients`` (64) with mixed lengths: the continuous scheduler with ``--fast``
   (compiled decoder step, CUDA graphs) against ``--scheduler static`` and the eager continuous
   one, after the budget, in ``--serving-seconds`` of its own (0 skips it).

Batch 64, source 512 / target 128, bf16 autocast. Writes ``results.json`` and ``results.md``.

    python bench/gpu.py --shape flan-t5-base --device cuda --out bench/results/gpu

A CPU smoke run of the same code path, every variant at fixed reps whatever the machine's load
(what tests/test_bench.py runs):

    python bench/gpu.py --shape tiny --device cpu --compile-backend eager --budget none --out /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import generation
import quantized
import train_step
from _common import BUDGET_HELP, CPU_THREADS, SHAPES, THREADS_HELP, budget, environment, log, setup

import serve

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="flan-t5-base")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="Folder for results.json and results.md.")
    parser.add_argument(
        "--budget", type=budget, default=270.0, help=f"For the whole run, start-up excluded. {BUDGET_HELP}"
    )
    parser.add_argument("--threads", type=int, default=CPU_THREADS, help=THREADS_HELP)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--train-reps", type=int, default=10)
    parser.add_argument("--gen-reps", type=int, default=3)
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="Backend of the compiled training step and of fast_generation; 'eager' makes a CPU smoke run quick.",
    )
    parser.add_argument("--serving-clients", type=int, default=64, help="Concurrent clients of the serving section.")
    parser.add_argument(
        "--serving-seconds", type=float, default=180.0, help="Time for the serving section after --budget; 0 skips it."
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget
    setup(args.device, args.threads)
    shape = SHAPES[args.shape]
    bf16 = args.device == "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"environment": environment(), "shape": args.shape, "geometry": vars(shape), "bf16": bf16}
    log(f"gpu bench: shape={args.shape} {shape} device={args.device} bf16={bf16} budget={args.budget}s")
    # Eager training gets ~20% of the budget, generation (three compiles among its variants) ~40%,
    # the compiled training run the rest. A split to re-tune on the first GPU that runs this.
    gen_shape = dataclasses.replace(shape, new_tokens=shape.tgt)
    sections = (
        (
            "train",
            lambda: train_step.run(
                shape, args.device, bf16, False, args.warmup, args.train_reps, start + 0.2 * args.budget
            ),
        ),
        (
            "generation",
            lambda: generation.run(
                gen_shape,
                args.device,
                bf16,
                True,
                1,
                args.gen_reps,
                start + 0.6 * args.budget,
                fast_backend=args.compile_backend,
            ),
        ),
        (
            "quantized",
            lambda: quantized.run_gpu(shape, args.device, args.warmup, args.train_reps, start + 0.75 * args.budget),
        ),
        ("compiled", lambda: run_compiled(args, deadline)),
        ("serving", lambda: run_serving(args, deadline)),
    )
    for name, section in sections:
        try:
            results[name] = section()
            log(f"{name}:\n{results[name]['table']}")
        except Exception as err:  # keep whatever the other sections measured
            results[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
            log(f"{name}: FAILED {results[name]['error']}")
        _write(args.out, results, start)
    return results


def run_serving(args: argparse.Namespace, deadline: float) -> dict:
    """The serving section in ``--serving-seconds`` after the budget (or whatever is left of it, if more)."""
    if args.serving_seconds <= 0:
        return {"skipped": "--serving-seconds 0", "table": ""}
    until = max(deadline, time.monotonic()) + args.serving_seconds
    return serve.run_serving(args.shape, args.device, args.threads, args.serving_clients, until)


def run_compiled(args: argparse.Namespace, deadline: float) -> dict:
    """The compile variant beside the stock hybrid, in a child killed at ``deadline``."""
    out = args.out / "compiled.json"
    left = deadline - time.monotonic()  # infinite under --budget none: the child runs to the end
    cmd = [
        sys.executable,
        "train_step.py",  # run in HERE: a relative name keeps machine paths out of the recorded command
        "--shape",
        args.shape,
        "--device",
        args.device,
        "--fast",
        "--only",
        train_step.STOCK_HYBRID,
        "--only",
        train_step.FAST,
        "--compile-backend",
        args.compile_backend,
        "--threads",
        str(args.threads),
        "--warmup",
        str(args.warmup),
        "--reps",
        str(args.train_reps),
        "--budget",
        "none" if math.isinf(left) else str(max(left - 20, 1)),
        "--no-prompt-join",
        "--out",
        str(out),
    ]
    if args.device == "cuda":
        cmd.append("--bf16")
    log(f"compiled: child process, {left:.0f} s left")
    try:
        subprocess.run(cmd, cwd=HERE, check=True, timeout=None if math.isinf(left) else max(left, 1))
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {left:.0f} s: the compile did not finish within the budget", "table": ""}
    return json.loads(out.read_text(encoding="utf-8"))


def _write(folder: Path, results: dict, start: float) -> None:
    results["elapsed_s"] = time.monotonic() - start
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    lines = [
        f"# GPU bench ({results['environment'].get('gpu', 'cpu')}, shape {results['shape']}, "
        f"{results['elapsed_s']:.0f} s)",
        "",
        "train `ratio_vs`: step time over the reference's (< 1 is faster); generation `ratio_vs` and",
        "`ratio_vs_base`: new tokens/s over the reference's (> 1 is faster). Memory: `peak_mib`.",
        "",
    ]
    for name in ("train", "generation", "quantized", "compiled", "serving"):
        if name in results:
            lines += [f"## {name}", "", results[name].get("table") or results[name].get("error", ""), ""]
    if "fast_over_static" in results.get("serving", {}):
        serving = results["serving"]
        lines.append(
            f"serving tokens/s, --fast over static: {serving['fast_over_static']:.3f}; "
            f"over eager continuous: {serving['fast_over_continuous']:.3f} ({serving['clients']} clients)"
        )
    (folder / "results.md").write_text("\n".join(lines), encoding="utf-8")
    log(f"wrote {folder}/results.json and results.md ({results['elapsed_s']:.0f} s so far)")


if __name__ == "__main__":
    main()
