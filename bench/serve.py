"""``peft-hybrid serve``: the continuous scheduler against the request-level one (``--scheduler static``).

Both servers run as their own processes (``python -m peft_hybrid.serve``) on a random-init base of
the bench shape with hybrid adapters (LoRA + soft prompt, moved off their initial values), and the
workloads alternate between them in one run:

- ``open``: open-loop Poisson arrivals of short requests (2 new tokens, a "sentiment" answer)
  alone, then mixed with long ones (48 new tokens, a "summary"), over two adapters: short-request
  p50 / p99 alone and in the mix;
- ``closed``: 64 closed-loop clients, mixed lengths (half short, half long) and uniform lengths
  (16 new tokens): generated tokens per second;
- ``adapters``: a continuous server holding ``--many`` lazily loaded adapters
  (``--max-adapters``; how long loading them all took, and each one's memory as ``/info``
  reports it): closed-loop tokens/s with requests spread over all of them (each adapter in turn),
  against the same requests over 4 of them, the two loads alternating in halves (4, all, all, 4).

With ``--fast`` a third server, ``continuous-fast`` (``serve --fast``: the fixed-shape batch and its
compiled decoder step), joins the alternation of the open- and closed-loop workloads.
`run_serving` is the GPU bench's serving section (``bench/gpu.py``): closed-loop tokens/s of the
compiled continuous server against the static one, at 64 clients.

Every greedy answer is checked against offline generation (`peft_hybrid.inference.generate_texts`,
the adapter's own settings), and 8 seeded sampled requests sent at once must each reproduce the
text the same request gets alone.

    python bench/serve.py --shape small --out bench/results/serve_small_cpu.json
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import math
import os
import random
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
from _common import build_base, log, make_parser, markdown_table, setup
from _common import write_results as write

from peft_hybrid import HybridConfig, HybridModel

SHORT, LONG, UNIFORM = 2, 48, 16  # new tokens
SCHEDULERS = ("static", "continuous")
MANY_WORKLOADS = ("adapters_4", "adapters_many")
FAST = "continuous-fast"  # serve --fast
SERVER_FLAGS = {"static": ["--scheduler", "static"], "continuous": ["--scheduler", "continuous"]}
SERVER_FLAGS[FAST] = [*SERVER_FLAGS["continuous"], "--fast"]
COLUMNS = ["workload", "scheduler", "requests", "short_p50_s", "short_p99_s", "tokens_per_s", "errors"]
READY = re.compile(r"peft-hybrid serve ready at http://([\d.]+):(\d+)")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much of each workload runs (``--size``)."""

    seconds: float  # per open-loop phase
    short_rate: float  # short requests per second (open loop)
    long_rate: float
    closed_requests: int  # per closed-loop run
    clients: int
    many: int  # adapters of the many-adapter workload
    src: int  # input tokens, about


SIZES = {
    "tiny": Sizes(seconds=2, short_rate=3, long_rate=1, closed_requests=8, clients=4, many=12, src=16),
    "full": Sizes(seconds=15, short_rate=3, long_rate=1, closed_requests=128, clients=64, many=1000, src=32),
}


def save_model(preset_shape, folder: Path, count: int) -> tuple[Path, dict[str, Path]]:
    """The base (safetensors + tokenizer) and ``count`` distinct adapters, each in its own folder.

    Each adapter is the first one's tensors moved off by its own noise, written by the folder
    format's own writer (without the model card ``save_pretrained`` renders: a thousand of them
    would take minutes).
    """
    from peft_hybrid.serialization import save_adapter

    base, tokenizer = build_base(preset_shape, "cpu")
    base.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    model = HybridModel(base, HybridConfig(mode="hybrid", lora_dropout=0.0), tokenizer=tokenizer, adapter_name="t")
    config, tensors = model.adapters["t"], model.adapter_tensors()
    generator = torch.Generator().manual_seed(1)
    adapters = {}
    for i in range(count):
        moved = {k: v.detach() + torch.randn(v.shape, generator=generator) * 0.05 for k, v in tensors.items()}
        adapters[f"t{i}"] = save_adapter(folder / "adapters" / f"t{i}", config, moved)
    return folder / "base", adapters


def texts(tokenizer, count: int, src: int) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    high = len(tokenizer) - 100  # below the sentinels
    return [tokenizer.decode(torch.randint(3, high, (src,), generator=generator)) for _ in range(count)]


class Server:
    def __init__(self, base: Path, args: list[str], threads: int) -> None:
        cmd = [sys.executable, "-m", "peft_hybrid.serve", "--base", str(base), "--port", "0", *args]
        cmd += ["--max-input-tokens", "256", "--max-queue", "4096", "--log-level", "warning"]
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

    def ask(self, body: dict) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        try:
            conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


@dataclasses.dataclass
class Request:
    adapter: str
    text: int
    new_tokens: int
    seed: int | None = None

    def body(self, inputs: list[str]) -> dict:
        params = {"adapter_id": self.adapter, "max_new_tokens": self.new_tokens, "details": True}
        if self.seed is not None:
            params.update(seed=self.seed, top_k=50)
        return {"inputs": inputs[self.text], "parameters": params}


def timed(server: Server, request: Request, inputs: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    status, payload = server.ask(request.body(inputs))
    out = {"request": request, "latency": time.perf_counter() - start, "status": status}
    if status == 200:
        out.update(text=payload["generated_text"], tokens=payload["details"]["generated_tokens"])
    return out


def open_loop(server: Server, stream: list[tuple[float, Request]], inputs: list[str]) -> list[dict]:
    """Each request sent at its arrival time, whatever is still running (an open loop)."""
    results: list[dict] = []
    with concurrent.futures.ThreadPoolExecutor(256) as pool:
        start = time.perf_counter()
        futures = []
        for at, request in stream:
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(timed, server, request, inputs))
        results = [f.result() for f in futures]
    return results


def closed_loop(server: Server, requests: list[Request], clients: int, inputs: list[str]) -> tuple[list, float]:
    """``clients`` threads, each sending its next request when its last is answered."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda r: timed(server, r, inputs), requests))
    return results, time.perf_counter() - start


def poisson(rate: float, seconds: float, make, rng: random.Random) -> list[tuple[float, Request]]:
    out, t = [], rng.expovariate(rate)
    while t < seconds:
        out.append((t, make()))
        t += rng.expovariate(rate)
    return out


def summary(workload: str, scheduler: str, results: list[dict], wall: float | None = None) -> dict[str, Any]:
    short = sorted(r["latency"] for r in results if r["request"].new_tokens == SHORT and r["status"] == 200)
    row = {"workload": workload, "scheduler": scheduler, "requests": len(results)}
    row["errors"] = sum(r["status"] != 200 for r in results)
    if short:
        row["short_p50_s"] = statistics.median(short)
        row["short_p99_s"] = short[min(len(short) - 1, int(0.99 * len(short)))]
    if wall:
        row["tokens_per_s"] = sum(r.get("tokens", 0) for r in results) / wall
    return row


def workloads(sizes: Sizes, count: int, rng: random.Random) -> dict[str, Any]:
    """Every request each workload sends (the same for both schedulers)."""

    def req(new: int, adapters: int = 2) -> Request:
        return Request(f"t{rng.randrange(adapters)}", rng.randrange(count), new)

    alone = poisson(sizes.short_rate, sizes.seconds, lambda: req(SHORT), rng)
    longs = poisson(sizes.long_rate, sizes.seconds, lambda: req(LONG), rng)
    mixed = sorted(alone + longs, key=lambda pair: pair[0])
    n = sizes.closed_requests
    return {
        "open_alone": alone,
        "open_mixed": mixed,
        "closed_mixed": [req(SHORT if i % 2 else LONG) for i in range(n)],
        "closed_uniform": [req(UNIFORM) for _ in range(n)],
        **many_adapters(sizes, count, rng),
    }


def many_adapters(sizes: Sizes, count: int, rng: random.Random) -> dict[str, list[Request]]:
    """One request per adapter of ``sizes.many`` (at least ``closed_requests``), in a shuffled order,
    and the same requests (texts and lengths) over 4 adapters."""
    order = list(range(sizes.many))
    rng.shuffle(order)
    n = max(sizes.closed_requests, sizes.many)
    many = [Request(f"t{order[i % sizes.many]}", rng.randrange(count), UNIFORM) for i in range(n)]
    four = [dataclasses.replace(r, adapter=f"t{rng.randrange(4)}") for r in many]
    return {"adapters_4": four, "adapters_many": many}


def run_schedulers(base, adapters, loads, inputs, args) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """The open- and closed-loop workloads, alternating between the two servers."""
    rows, answers = [], []
    flags = [a for name in ("t0", "t1", "t2", "t3") for a in ("--adapter", f"{name}={adapters[name]}")]
    variants = (*SCHEDULERS, FAST) if args.fast else SCHEDULERS
    servers = {s: Server(base, [*flags, *SERVER_FLAGS[s]], args.threads) for s in variants}
    try:
        for server in servers.values():  # warm-up: first calls, allocator, the fast server's compile
            closed_loop(server, loads["closed_uniform"][:4], 4, inputs)
        for index, workload in enumerate(("open_alone", "open_mixed", "closed_mixed", "closed_uniform")):
            for scheduler in variants if index % 2 == 0 else variants[::-1]:
                if workload.startswith("open"):
                    results, wall = open_loop(servers[scheduler], loads[workload], inputs), None
                else:
                    results, wall = closed_loop(servers[scheduler], loads[workload], args.clients, inputs)
                rows.append(summary(workload, scheduler, results, wall))
                answers += results
                log(rows[-1])
        seeds = sampled(servers["continuous"], inputs)
        if FAST in servers:
            seeds.update({f"{FAST}_{k}": v for k, v in sampled(servers[FAST], inputs).items()})
    finally:
        for server in servers.values():
            server.stop()
    return rows, answers, seeds


def sampled(server: Server, inputs: list[str]) -> dict[str, Any]:
    """8 seeded sampled requests (some sharing a seed), alone and then all at once."""
    requests = [Request(f"t{i % 2}", i % 3, UNIFORM, seed=1000 + i % 3) for i in range(8)]
    solo = [timed(server, r, inputs).get("text") for r in requests]
    together, _ = closed_loop(server, requests, 8, inputs)
    same = sum(a == b.get("text") for a, b in zip(solo, together))
    return {"seeded_sampled_reproduced": same, "seeded_sampled_sent": len(requests)}


def run_adapters(base, adapters, loads, inputs, args, sizes: Sizes) -> tuple[list[dict], list[dict], dict]:
    """One continuous server holding ``sizes.many`` adapters: the load over 4 of them and over all, alternating."""
    folder = Path(adapters["t0"]).parent
    flags = ["--lazy-adapters", "--allow-adapter", f"{folder}/*", "--max-adapters", str(sizes.many)]
    server = Server(base, [*flags, "--scheduler", "continuous"], args.threads)
    answers, walls = [], {}
    try:
        log(f"loading {sizes.many} adapters lazily")
        start = time.perf_counter()
        closed_loop(server, [Request(str(adapters[f"t{i}"]), 0, 1) for i in range(sizes.many)], 8, inputs)
        loading = {"many_adapters_load_s": time.perf_counter() - start, **adapter_memory(server)}
        log(loading)
        halves = {w: [loads[w][: len(loads[w]) // 2], loads[w][len(loads[w]) // 2 :]] for w in MANY_WORKLOADS}
        for half, workload in ((0, "adapters_4"), (0, "adapters_many"), (1, "adapters_many"), (1, "adapters_4")):
            load = [dataclasses.replace(r, adapter=str(adapters[r.adapter])) for r in halves[workload][half]]
            results, wall = closed_loop(server, load, args.clients, inputs)
            for result in results:  # report by name, as the offline check looks them up
                named = Path(result["request"].adapter).name
                result["request"] = dataclasses.replace(result["request"], adapter=named)
            answers.append((workload, results))
            walls[workload] = walls.get(workload, 0.0) + wall
            log(f"{workload}, half {half + 1}: {sum(r.get('tokens', 0) for r in results) / wall:.1f} tokens/s")
    finally:
        server.stop()
    rows = []
    for workload in MANY_WORKLOADS:
        results = [r for w, part in answers if w == workload for r in part]
        rows.append(summary(workload, "continuous", results, walls[workload]))
        log(rows[-1])
    return rows, [r for _, part in answers for r in part], loading


def adapter_memory(server: Server) -> dict[str, Any]:
    """What ``/info`` says of the loaded adapters: how many, each one's bytes (smallest, largest), all."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    try:
        conn.request("GET", "/info")
        listed = [a for a in json.loads(conn.getresponse().read())["adapters"] if a["loaded"]]
    finally:
        conn.close()
    each = [a["memory_bytes"] for a in listed]
    return {
        "adapters_loaded": len(listed),
        "adapter_bytes_min": min(each),
        "adapter_bytes_max": max(each),
        "adapter_bytes_total": sum(each),
    }


def run_serving(shape: str, device: str, threads: int, clients: int, deadline: float) -> dict[str, Any]:
    """The GPU bench's serving section: closed-loop tokens/s at ``clients`` clients, mixed lengths (half
    short, half long), two hybrid adapters, the static, continuous and continuous-fast servers
    interleaved (two rounds each after a warm-up round at full batch, which compiles the fast one).
    bf16 on a GPU, so answers are not compared with offline generation here; the CPU runs of
    `main` check them."""
    from _common import SHAPES
    from transformers import AutoTokenizer

    rng, variants, rows, servers = random.Random(0), (*SCHEDULERS, FAST), [], {}
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = save_model(SHAPES[shape], Path(tmp), 2)
        inputs = texts(AutoTokenizer.from_pretrained(str(base)), 16, 64)
        flags = [a for name in ("t0", "t1") for a in ("--adapter", f"{name}={adapters[name]}")]
        flags += ["--device", device, "--max-batch-size", str(clients)]
        flags += ["--dtype", "bfloat16"] if device == "cuda" else []
        load = [
            Request(f"t{rng.randrange(2)}", rng.randrange(16), SHORT if i % 2 else LONG) for i in range(4 * clients)
        ]
        try:
            for variant in variants:
                servers[variant] = Server(base, [*flags, *SERVER_FLAGS[variant]], threads)
                closed_loop(servers[variant], load[:clients], clients, inputs)
            for rep in range(2):
                for variant in variants if rep % 2 == 0 else variants[::-1]:
                    if time.monotonic() < deadline:
                        results, wall = closed_loop(servers[variant], load, clients, inputs)
                        rows.append({**summary("closed_mixed", variant, results, wall), "rep": rep})
                        log(rows[-1])
        finally:
            for server in servers.values():
                server.stop()
    rate = {
        v: statistics.median([r["tokens_per_s"] for r in rows if r["scheduler"] == v] or [math.nan]) for v in variants
    }
    out = {"rows": rows, "clients": clients, "tokens_per_s": rate, "table": markdown_table(rows, [*COLUMNS, "rep"])}
    out["fast_over_static"] = rate[FAST] / rate["static"]
    out["fast_over_continuous"] = rate[FAST] / rate["continuous"]
    return out


def offline_mismatches(base: Path, adapters: dict[str, Path], answers: list[dict], inputs: list[str]) -> int:
    """Greedy answers that differ from offline generation with the adapter's saved settings."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from peft_hybrid.inference import generate_texts, model_inputs

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = HybridModel(T5ForConditionalGeneration.from_pretrained(str(base)), HybridConfig(mode="none"))
    model.eval()
    wanted: dict[str, set[tuple[int, int]]] = {}
    greedy = [a for a in answers if a["status"] == 200 and a["request"].seed is None]
    for answer in greedy:
        r = answer["request"]
        wanted.setdefault(r.adapter, set()).add((r.text, r.new_tokens))
    reference = {}
    for name, pairs in wanted.items():
        model.load_adapter(str(adapters[name]), name)
        model.set_adapter(name)
        for new in sorted({n for _, n in pairs}):
            ids = sorted(t for t, n in pairs if n == new)
            sources = model_inputs(model.hybrid_config, [inputs[t] for t in ids])
            outputs = generate_texts(model, tokenizer, sources, batch_size=1, max_new_tokens=new, progress=False)
            reference.update({(name, t, new): out for t, out in zip(ids, outputs)})
        model.set_adapter("default")
        model.delete_adapter(name)
    return sum(
        a["text"] != reference[(a["request"].adapter, a["request"].text, a["request"].new_tokens)] for a in greedy
    )


def ratios(rows: list[dict]) -> dict[str, Any]:
    at = {(r["workload"], r["scheduler"]): r for r in rows}
    out = {}
    fast = (FAST,) if ("open_alone", FAST) in at else ()
    for s in (*SCHEDULERS, *fast):
        alone, mixed = at[("open_alone", s)], at[("open_mixed", s)]
        out[f"{s}_short_p50_mixed_over_alone"] = mixed["short_p50_s"] / alone["short_p50_s"]
        out[f"{s}_short_p99_mixed_over_alone"] = mixed["short_p99_s"] / alone["short_p99_s"]
    for workload in ("closed_mixed", "closed_uniform"):
        c, s = at[(workload, "continuous")], at[(workload, "static")]
        out[f"{workload}_tokens_per_s_continuous_over_static"] = c["tokens_per_s"] / s["tokens_per_s"]
        for f in fast:
            out[f"{workload}_tokens_per_s_fast_over_continuous"] = (
                at[(workload, f)]["tokens_per_s"] / c["tokens_per_s"]
            )
    many, four = at[("adapters_many", "continuous")], at[("adapters_4", "continuous")]
    out["many_over_4_adapters_tokens_per_s"] = many["tokens_per_s"] / four["tokens_per_s"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(__doc__.splitlines()[0])
    parser.set_defaults(shape="small")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="tiny: a quick check that it runs")
    parser.add_argument("--fast", action="store_true", help=f"also a {FAST} server (serve --fast) in the alternation")
    parser.set_defaults(threads=1)  # the server's CPU threads (and this client's): one per process
    args = parser.parse_args(argv)
    setup(args.device, args.threads)
    from _common import SHAPES

    sizes = SIZES[args.size]
    args.clients = sizes.clients
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"saving {sizes.many} adapters")
        base, adapters = save_model(SHAPES[args.shape], Path(tmp), max(sizes.many, 4))
        from transformers import AutoTokenizer

        inputs = texts(AutoTokenizer.from_pretrained(str(base)), 16, sizes.src)
        loads = workloads(sizes, len(inputs), rng)
        rows, answers, seeds = run_schedulers(base, adapters, loads, inputs, args)
        many_rows, many_answers, loading = run_adapters(base, adapters, loads, inputs, args, sizes)
        rows += many_rows
        log("checking every greedy answer against offline generation")
        mismatches = offline_mismatches(base, adapters, answers + many_answers, inputs)
    result = {"rows": rows, **ratios(rows), **seeds, **loading, "greedy_answers_checked": len(answers + many_answers)}
    result["greedy_mismatches_vs_offline"] = mismatches
    log(f"serve, shape={args.shape}, size={args.size} {sizes}\n{markdown_table(rows, COLUMNS)}")
    log(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    write(
        args.out, {"shape": args.shape, "sizes": dataclasses.asdict(sizes), "server_threads": args.threads, **result}
    )
    return result


if __name__ == "__main__":
    main()
