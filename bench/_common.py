"""Shared bench helpers: shapes, synthetic batches, timing, peak memory, robust runs, tables.

Every bench script imports this module (one home); none copies from another.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from peft_hybrid.offline import presets  # noqa: E402

# A bench-local "small T5" shape for CPU targets (between tiny and flan-t5-small).
presets.PRESETS.setdefault(
    "bench-small", dict(d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_heads=4, vocab_size=32128)
)


@dataclass(frozen=True)
class Shape:
    """A model preset plus the batch geometry it is benchmarked at."""

    preset: str
    batch: int
    src: int
    tgt: int
    new_tokens: int


SHAPES = {
    "tiny": Shape("tiny", batch=16, src=64, tgt=32, new_tokens=16),
    "small": Shape("bench-small", batch=16, src=256, tgt=64, new_tokens=64),
    "flan-t5-base": Shape("flan-t5-base", batch=64, src=512, tgt=128, new_tokens=64),
}


def make_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for every variant (default on cuda).")
    parser.add_argument("--budget", type=budget, default=1800.0, help=BUDGET_HELP)
    parser.add_argument("--threads", type=int, default=CPU_THREADS, help=THREADS_HELP)
    return parser


# Two threads on the 2-core machines the CPU figures come from; on a busy machine two threads contend
# badly, so the tests run the benches with one.
CPU_THREADS = 2
THREADS_HELP = f"torch CPU threads (default {CPU_THREADS}; 1 on a busy machine)."
BUDGET_HELP = "Seconds; variants past it are skipped. 'none': every variant, every rep, however long it takes."


def budget(text: str) -> float:
    """``--budget``: positive seconds, or ``none`` (infinity) for a run that must not depend on the machine's speed."""
    if text.strip().lower() == "none":
        return math.inf
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: pass positive seconds, or 'none' for no budget")
    return seconds


def setup(device: str, threads: int = CPU_THREADS, seed: int = 0) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu.")
    if device == "cpu":
        torch.set_num_threads(threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_base(shape: Shape, device: str, seed: int = 0):
    """A fresh random-init T5 of the shape (every variant gets its own, same weights)."""
    model, tokenizer = presets.t5_from_preset(shape.preset, seed=seed)
    return model.to(device), tokenizer


def make_batch(shape: Shape, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed-size random token batch of ordinary pieces of the offline tokenizer."""
    high = len(presets.offline_tokenizer()) - 100  # below the sentinels
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, high, (shape.batch, shape.src), generator=g)
    labels = torch.randint(3, high, (shape.batch, shape.tgt), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
    }


def autocast(device: str, bf16: bool):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_reps(fn: Callable[[], Any], device: str, warmup: int, reps: int) -> list[float]:
    """Seconds per call for ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, Any]]:
    """Peak memory inside the block: CUDA max allocated, or on CPU the sampled RSS peak minus
    the RSS at entry (10 ms sampling; the allocator may reuse memory freed earlier, so treat
    CPU figures as approximate)."""
    result: dict[str, Any] = {}
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - start) / 2**20
        result["memory_kind"] = "cuda max_memory_allocated"
        return
    start = _rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], _rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result["peak_mib"] = (peak[0] - start) / 2**20
        result["memory_kind"] = "cpu RSS peak delta (sampled)"


def run_interleaved(
    prepares: dict[str, Callable[[], tuple[Callable[[], Any], dict[str, Any]]]],
    device: str,
    warmup: int,
    reps: int,
    deadline: float,
) -> list[dict[str, Any]]:
    """Build every variant, then time them round-robin; errors and the budget are recorded.

    ``prepare()`` builds a variant and returns ``(call, info)``. Peak memory covers the build,
    the first call (which holds any compile) and the warm-up. The timed calls then alternate
    between variants, rep by rep (the starting variant rotating), so a load spike from other
    processes on a shared machine hits every variant alike instead of whichever ran at the time.
    """
    rows: dict[str, dict[str, Any]] = {}
    calls: dict[str, Callable[[], Any]] = {}
    for name, prepare in prepares.items():
        if time.monotonic() > deadline:
            rows[name] = {"variant": name, "error": "skipped: time budget spent"}
            log(f"{name}: skipped (time budget spent)")
            continue
        log(f"{name}: build + warm-up")
        try:
            with peak_memory(device) as mem:
                call, info = prepare()
                start = time.perf_counter()
                call()
                _sync(device)
                first = time.perf_counter() - start
                for _ in range(max(warmup - 1, 0)):
                    call()
                _sync(device)
            rows[name] = {"variant": name, **info, **mem, "first_call_s": first, "times_s": []}
            calls[name] = call
            log(f"{name}: first call {first:.3g}s, peak {mem['peak_mib']:.1f} MiB")
        except Exception as err:  # a failing variant must not sink the others
            traceback.print_exc()
            rows[name] = {"variant": name, "error": f"{type(err).__name__}: {err}"[:500]}
            log(f"{name}: FAILED {rows[name]['error']}")
    for rep in range(reps):
        if time.monotonic() > deadline:
            log(f"time budget spent after {rep} timed reps")
            break
        # Rotate the starting variant, so that none always runs first in a rep.
        names = list(calls)
        first = rep % len(names) if names else 0
        for name in names[first:] + names[:first]:
            try:
                start = time.perf_counter()
                calls[name]()
                _sync(device)
                rows[name]["times_s"].append(time.perf_counter() - start)
            except Exception as err:
                traceback.print_exc()
                rows[name]["error"] = f"{type(err).__name__}: {err}"[:500]
                del calls[name]
        log(f"rep {rep + 1}/{reps} done")
    for row in rows.values():
        if row.get("times_s"):
            row.update(summarize(row["times_s"]))
        elif "error" not in row:
            row["error"] = "no timed reps (time budget spent)"
    return list(rows.values())


def summarize(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def add_ratios(
    rows: list[dict[str, Any]], key: str, pairs: dict[str, str], paired_key: str = "paired_speedup"
) -> None:
    """For each row in ``pairs`` (row -> reference row): ``ratio_vs``, its ``key`` over the
    reference's, and under ``paired_key`` the `paired_speedup` against the reference."""
    by_name = {r["variant"]: r for r in rows}
    for name, ref in pairs.items():
        row, base = by_name.get(name), by_name.get(ref)
        if row and base and key in row and key in base:
            row["ratio_vs"] = f"{row[key] / base[key]:.3f}x {ref}"
            row[paired_key] = paired_speedup(row, base)


def paired_speedup(row: dict[str, Any], ref: dict[str, Any]) -> float | None:
    """Median over reps of ``ref time / row time`` (> 1: the row is faster).

    The variants are timed round-robin, so rep ``i`` of every variant ran within seconds of the
    others; the ratio inside a rep cancels most of a shared machine's drifting load, which a
    ratio of two medians taken over the whole run does not.
    """
    ours, theirs = row.get("times_s") or [], ref.get("times_s") or []
    n = min(len(ours), len(theirs))
    return statistics.median(t / o for o, t in zip(ours[:n], theirs[:n])) if n else None


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import peft
    import transformers

    cpu = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def write_results(path: Path | None, payload: dict[str, Any]) -> None:
    payload = {"environment": environment(), "command": " ".join([Path(sys.executable).name, *sys.argv]), **payload}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {path}")
