"""The server's running batch in process: eager `RowBatch` against the compiled `SlotBatch` (``serve --fast``).

Both drive the same workload the way the continuous scheduler does: requests (hybrid adapters
and the bare base, mixed per row; input and answer lengths drawn at random) join as rows leave,
``--rows`` at a time, greedy. The variants alternate in one run (``--reps`` rounds each, after one
untimed warm-up round that compiles), every round's tokens must equal the eager ones, and the
table gives generated tokens per second, the seconds spent in decoder steps (the part compiled;
joining rows' prefill is eager in both), and the compiled variant's ratios to eager.

    python bench/serve_decode.py --shape small --rows 16 64 --threads 1
"""

from __future__ import annotations

import collections
import random
import statistics
import time

import torch
from _common import build_base, log, make_parser, markdown_table, setup, write_results

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.serve.rowbatch import RowBatch
from peft_hybrid.serve.slotbatch import SlotBatch

ADAPTERS = ("a", "b")
COLUMNS = ["rows", "variant", "requests", "tokens", "tokens_per_s", "ratio_to_eager", "step_s", "step_ratio_to_eager"]
COLUMNS += ["mismatched_rows"]


def build(shape, device: str) -> tuple[HybridModel, object]:
    """The base with two hybrid adapters (LoRA + soft prompt) moved off their initial values."""
    base, tokenizer = build_base(shape, device)
    model = HybridModel(base, HybridConfig(mode="none"), tokenizer=tokenizer, adapter_name="idle")
    generator = torch.Generator().manual_seed(0)
    for name in ADAPTERS:
        model.add_adapter(name, HybridConfig(mode="hybrid", num_virtual_tokens=8, lora_dropout=0.0))
    with torch.no_grad():
        for tensor in model.all_adapter_tensors():
            tensor.add_(torch.randn(tensor.shape, generator=generator).to(tensor.device) * 0.05)
    return model.to(device).eval(), tokenizer


def workload(count: int, src: int, max_new: int, vocab: int, seed: int) -> list[tuple[list[int], str, int]]:
    """``count`` requests: token ids, adapter (or ``__base__``), new tokens."""
    rng = random.Random(seed)
    names = [*ADAPTERS, "__base__"]
    return [
        (
            [rng.randrange(3, vocab) for _ in range(rng.randint(src // 4, src))] + [1],
            rng.choice(names),
            rng.randint(4, max_new),
        )
        for _ in range(count)
    ]


def decode(model, pad_id: int, requests, rows: int, slots: SlotBatch | None) -> tuple[list[list[int]], float, float]:
    """Every request's greedy tokens, ``rows`` in flight at a time; the seconds it took, and those of the steps."""
    queue, live, done = collections.deque(range(len(requests))), [], {}
    batch, next_tokens = slots, None
    start, stepping = time.perf_counter(), 0.0
    while queue or live:
        joining = [queue.popleft() for _ in range(min(len(queue), rows - len(live)))]
        if joining:
            if batch is not None:
                batch.close_adapters()
            new, logits = RowBatch.prefill(
                model, [requests[i][0] for i in joining], [requests[i][1] for i in joining], pad_id
            )
            tokens = logits.argmax(-1)
            if batch is None:
                batch = new
            else:
                batch.concat(new)
            live += [[i, [t]] for i, t in zip(joining, tokens.tolist())]
            next_tokens = tokens if next_tokens is None else torch.cat([next_tokens, tokens])
        keep = [k for k, (i, out) in enumerate(live) if len(out) < requests[i][2]]
        done.update({i: out for k, (i, out) in enumerate(live) if k not in keep})
        if len(keep) < len(live):
            live, next_tokens = [live[k] for k in keep], next_tokens[keep]
            if keep or slots is not None:
                batch.filter(keep)
            else:  # eager: the next rows start a batch of their own, as in the scheduler
                batch.close_adapters()
                batch = None
        if live:
            before = time.perf_counter()
            next_tokens = batch.step(next_tokens).argmax(-1)
            for row, token in zip(live, next_tokens.tolist()):  # .tolist() waits for the step
                row[1].append(token)
            stepping += time.perf_counter() - before
    if batch is not None:
        batch.close_adapters()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return [done[i] for i in range(len(requests))], time.perf_counter() - start, stepping


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 64], help="rows in flight (default 16 64)")
    parser.add_argument("--requests", type=int, default=None, help="requests per round (default 2 x rows)")
    parser.add_argument("--max-new", type=int, default=32, help="new tokens per request: 4 to this (32)")
    parser.add_argument("--src", type=int, default=48, help="input tokens per request: a quarter of this to this (48)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled variant")
    parser.set_defaults(reps=2)
    args = parser.parse_args(argv)
    setup(args.device, args.threads)
    from _common import SHAPES

    model, tokenizer = build(SHAPES[args.shape], args.device)
    results = []
    for rows in args.rows:
        requests = workload(args.requests or 2 * rows, args.src, args.max_new, len(tokenizer) - 100, seed=rows)
        slots = SlotBatch.sized(model, rows, args.max_new, backend=args.backend)
        expected, _, _ = decode(model, tokenizer.pad_token_id, requests, rows, None)
        warm, _, _ = decode(model, tokenizer.pad_token_id, requests, rows, slots)  # compiles
        mismatched = sum(a != b for a, b in zip(warm, expected))
        seconds = {"eager": ([], []), "compiled": ([], [])}  # (whole round, decoder steps only)
        for rep in range(args.reps):
            for variant in ("eager", "compiled"):
                batch = slots if variant == "compiled" else None
                got, took, stepping = decode(model, tokenizer.pad_token_id, requests, rows, batch)
                mismatched += sum(a != b for a, b in zip(got, expected))
                seconds[variant][0].append(took)
                seconds[variant][1].append(stepping)
                log(f"rows {rows} rep {rep} {variant}: {took:.2f} s, steps {stepping:.2f} s")
        tokens = sum(len(out) for out in expected)
        eager = [statistics.median(times) for times in seconds["eager"]]
        for variant, (whole, steps) in seconds.items():
            took, stepping = statistics.median(whole), statistics.median(steps)
            results.append(
                dict(
                    rows=rows,
                    variant=variant,
                    requests=len(requests),
                    tokens=tokens,
                    tokens_per_s=round(tokens / took, 1),
                    ratio_to_eager=round(eager[0] / took, 3),
                    step_s=round(stepping, 3),
                    step_ratio_to_eager=round(eager[1] / stepping, 3),
                    mismatched_rows=mismatched,
                )
            )
    print(markdown_table(results, COLUMNS))
    payload = {"shape": args.shape, "device": args.device, "backend": args.backend, "results": results}
    write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
