"""Mixed-batch rows against the same rows alone, per dtype: how many of N rows generate the same tokens.

Each of ``--rows`` rows uses one of ``--adapters`` adapters (LoRA, DoRA and hybrid in turn, random
weights) and generates greedily alone (``adapter_names=[name]``), in one mixed batch
(``adapter_names`` one per row), and in a plain batch of the same rows that all use that row's
adapter (what any batching does to a row), padded as tokenizers pad and padded to the mixed batch's
encoder length (the longest row's prompt plus tokens, where the adapter's own prompt allows).
Counted: rows whose tokens equal the row alone, and mixed rows whose tokens equal the same row of
the same-length plain batch.

    python bench/mixed_precision_rows.py --preset flan-t5-small --rows 20 --new-tokens 24

fp32 gives N/N everywhere (each row's answer depends only on its own input). In bf16 a row's
rounding depends on the batch's encoder length, so a row can differ from itself alone in any batch;
a mixed row equals the same-length plain row (N/N): mixing adds no rounding of its own, only the
padding that a longer prompt in the batch brings, as a longer input would.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.offline import PRESETS, t5_from_preset
from peft_hybrid.offline.synthetic import dialogue_summary_pairs

CONFIGS = [
    HybridConfig(mode="lora", r=4, lora_alpha=6, lora_dropout=0.0, target_modules=["q", "k", "v", "o"]),
    HybridConfig(mode="lora", r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True),
    HybridConfig(mode="hybrid", r=8, lora_alpha=12, lora_dropout=0.0, num_virtual_tokens=10),
]


def build(preset: str, adapters: int, seed: int) -> tuple[HybridModel, object]:
    base, tok = t5_from_preset(preset, seed=seed)
    model = HybridModel(base, CONFIGS[0], tokenizer=tok, adapter_name="a0")
    for i in range(1, adapters):
        model.add_adapter(f"a{i}", CONFIGS[i % len(CONFIGS)])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for tensor in model.all_adapter_tensors():
            tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.05)
    return model.eval(), tok


def count(model: HybridModel, tok, texts: list[str], names: list[str], new_tokens: int) -> dict[str, int]:
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    batch = tok(texts, return_tensors="pt", padding=True)
    alone = [
        model.generate(**tok([t], return_tensors="pt"), adapter_names=[n], **settings)[0] for t, n in zip(texts, names)
    ]
    mixed = model.generate(**batch, adapter_names=names, **settings)
    plain = {n: model.generate(**batch, adapter_names=[n] * len(texts), **settings) for n in sorted(set(names))}
    prompt = {n: c.num_virtual_tokens if c.uses_prompt else 0 for n, c in model.adapters.items()}
    longest = max(prompt[n] + int(mask.sum()) for n, mask in zip(names, batch.attention_mask))
    same_shape = {}
    for n in sorted(set(names)):
        # A prompt adapter's plain batch cannot be shorter than its prompt plus the longest input.
        length = max(longest - prompt[n], batch.input_ids.shape[1])
        padded = tok(texts, return_tensors="pt", padding="max_length", max_length=length)
        same_shape[n] = model.generate(**padded, adapter_names=[n] * len(texts), **settings)
    return {
        "mixed": sum(torch.equal(mixed[i], alone[i]) for i in range(len(texts))),
        "plain": sum(torch.equal(plain[n][i], alone[i]) for i, n in enumerate(names)),
        "plain_same_length": sum(torch.equal(same_shape[n][i], alone[i]) for i, n in enumerate(names)),
        "mixed_equals_same_length_plain": sum(torch.equal(mixed[i], same_shape[n][i]) for i, n in enumerate(names)),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, int]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model, tok = build(args.preset, args.adapters, args.seed)
    texts = [pair["dialogue"] for pair in dialogue_summary_pairs(args.rows, args.seed)]
    names = [f"a{i % args.adapters}" for i in range(args.rows)]
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        counts = count(copy.deepcopy(model).to(dtype), tok, texts, names, args.new_tokens)
        results[str(dtype).removeprefix("torch.")] = counts
        print(
            f"{dtype}: rows equal alone: mixed {counts['mixed']}/{args.rows}, plain batching {counts['plain']}/"
            f"{args.rows}, plain batching at the mixed length {counts['plain_same_length']}/{args.rows}; mixed rows "
            f"equal the same-length plain rows: {counts['mixed_equals_same_length_plain']}/{args.rows}"
        )
    print(json.dumps({"preset": args.preset, "rows": args.rows, "new_tokens": args.new_tokens, **results}))
    return results


if __name__ == "__main__":
    main()
