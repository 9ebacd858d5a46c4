"""``peft-hybrid serve`` under closed-loop load: cross-task batching against one request at a time.

The server runs as its own process (``python -m peft_hybrid.serve``) on a random-init base of the
bench shape, saved to a folder with ``adapters`` hybrid adapters (LoRA + soft prompt, moved off
their initial values). ``C`` client threads each send a request, wait for its answer, and send the
next (closed loop), ``requests`` per client, at concurrency 1, 8 and 32; request ``i`` names
adapter ``i % adapters``, so every batch mixes tasks. Every request generates greedily up to
``new_tokens`` tokens from a source of about ``src`` tokens. The same load runs against the
server with batching on (``--max-batch-size 32``) and with ``--max-batch-size 1``, and the two
must answer every (adapter, input) pair with the same text.

    python bench/serve.py --shape small --out bench/results/serve_small_cpu.json
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from _common import SHAPES, build_base, log, make_parser, markdown_table, setup
from _common import write_results as write

from peft_hybrid import HybridConfig, HybridModel

# Short requests keep the run within minutes on a shared 2-core CPU.
GEOMETRY = {
    "tiny": dataclasses.replace(SHAPES["tiny"], src=32, new_tokens=8),
    "small": dataclasses.replace(SHAPES["small"], src=64, new_tokens=16),
    "flan-t5-base": dataclasses.replace(SHAPES["flan-t5-base"], src=128, new_tokens=32),
}
ADAPTERS = 4
CONCURRENCY = (1, 8, 32)
MODES = {"batched": ["--max-batch-size", "32"], "unbatched": ["--max-batch-size", "1"]}  # else the defaults
COLUMNS = ["mode", "concurrency", "requests", "requests_per_s", "p50_s", "p99_s", "errors"]
READY = re.compile(r"peft-hybrid serve ready at http://([\d.]+):(\d+)")


def save_model(shape, folder: Path) -> tuple[Path, dict[str, Path]]:
    """The base (safetensors + tokenizer) and the adapters, each in its own folder."""
    base, tokenizer = build_base(shape, "cpu")
    base.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    model = HybridModel(base, HybridConfig(mode="hybrid", lora_dropout=0.0), tokenizer=tokenizer, adapter_name="t0")
    for i in range(1, ADAPTERS):
        model.add_adapter(f"t{i}", HybridConfig(mode="hybrid", lora_dropout=0.0, seed=i))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in model.all_adapter_tensors():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    adapters = {}
    for i in range(ADAPTERS):
        model.set_adapter(f"t{i}")
        adapters[f"t{i}"] = model.save_pretrained(folder / f"t{i}")
    return folder / "base", adapters


def inputs(tokenizer, shape, count: int) -> list[str]:
    """``count`` distinct texts of about ``shape.src`` ordinary tokens."""
    generator = torch.Generator().manual_seed(0)
    high = len(tokenizer) - 100  # below the sentinels
    return [tokenizer.decode(torch.randint(3, high, (shape.src,), generator=generator)) for _ in range(count)]


class Server:
    def __init__(self, base: Path, adapters: dict[str, Path], extra: list[str], device: str, threads: int) -> None:
        cmd = [sys.executable, "-m", "peft_hybrid.serve", "--base", str(base), "--port", "0", "--device", device]
        for name, path in adapters.items():
            cmd += ["--adapter", f"{name}={path}"]
        cmd += ["--max-input-tokens", "1024", "--max-queue", "1024", "--log-level", "warning", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in self.proc.stdout:
            match = READY.search(line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                break
        else:
            raise RuntimeError(f"server exited with {self.proc.wait()}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep its pipe drained

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def load(server: Server, texts: list[str], concurrency: int, per_client: int, new_tokens: int) -> dict[str, Any]:
    """Closed-loop clients; returns the figures and every answer by (adapter, text index)."""
    latencies: list[float] = []
    answers: dict[tuple[str, int], str] = {}
    errors: list[str] = []

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
        for k in range(per_client):
            i = c * per_client + k
            adapter, text = f"t{i % ADAPTERS}", i % len(texts)
            body = {"inputs": texts[text], "parameters": {"adapter_id": adapter, "max_new_tokens": new_tokens}}
            start = time.perf_counter()
            conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            latencies.append(time.perf_counter() - start)
            if response.status != 200:
                errors.append(payload.get("error", str(response.status)))
            else:
                answers[(adapter, text)] = payload["generated_text"]
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    row = {
        "concurrency": concurrency,
        "requests": len(latencies),
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "errors": len(errors),
    }
    return {"row": row, "answers": answers, "error_messages": errors[:3]}


def run(shape, args) -> dict[str, Any]:
    rows, answers = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = save_model(shape, Path(tmp))
        from transformers import AutoTokenizer

        texts = inputs(AutoTokenizer.from_pretrained(str(base)), shape, 2 * ADAPTERS * 4)
        for mode, extra in MODES.items():
            server = Server(base, adapters, extra, args.device, args.threads)
            try:
                load(server, texts, 2, 2, shape.new_tokens)  # warm-up: first calls, allocator
                for concurrency in CONCURRENCY:
                    per_client = max(args.requests // concurrency, args.min_per_client)
                    result = load(server, texts, concurrency, per_client, shape.new_tokens)
                    rows.append({"mode": mode, **result["row"], "error_messages": result["error_messages"]})
                    answers.setdefault(mode, {}).update(result["answers"])
                    log(f"{mode} c={concurrency}: {result['row']}")
            finally:
                server.stop()
    shared = set(answers["batched"]) & set(answers["unbatched"])
    same = all(answers["batched"][k] == answers["unbatched"][k] for k in shared)
    return {"rows": rows, "same_text_batched_vs_unbatched": same, "pairs_compared": len(shared), **_targets(rows)}


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    at = {(r["mode"], r["concurrency"]): r for r in rows}
    batched, unbatched = at[("batched", 32)], at[("unbatched", 32)]
    speedup = batched["requests_per_s"] / unbatched["requests_per_s"]
    return {
        "speedup_at_32": speedup,
        "target_speedup_3x_met": speedup >= 3,
        "p99_at_32": {"batched": batched["p99_s"], "unbatched": unbatched["p99_s"]},
        "target_p99_no_worse_met": batched["p99_s"] <= unbatched["p99_s"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(__doc__.splitlines()[0])
    parser.set_defaults(shape="small")
    parser.add_argument("--requests", type=int, default=64, help="requests per (mode, concurrency), about")
    parser.add_argument("--min-per-client", type=int, default=2, help="requests each client sends at least")
    parser.set_defaults(threads=1)  # the server's CPU threads (and this client's): one per process
    args = parser.parse_args(argv)
    setup(args.device, args.threads)
    shape = GEOMETRY[args.shape]
    result = run(shape, args)
    table = markdown_table(result["rows"], COLUMNS)
    log(f"serve, shape={args.shape} {shape}, {ADAPTERS} adapters\n{table}")
    log(f"speed-up at 32: {result['speedup_at_32']:.2f}x; same text: {result['same_text_batched_vs_unbatched']}")
    settings = {"shape": args.shape, "geometry": dataclasses.asdict(shape), "adapters": ADAPTERS, "modes": MODES}
    write(args.out, {**settings, "server_threads": args.threads, **result})
    return result


if __name__ == "__main__":
    main()
