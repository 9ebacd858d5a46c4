"""Quantized frozen base (QLoRA): memory of the base and ROUGE-L of the offline demo task, fp32 vs NF4 / int8.

Two sections:

1. ``memory``: a random-init base of the shape (``flan-t5-base``: d_model 768, 12+12 layers) saved
   once, then loaded fp32, NF4 and int8, each in its own child process (a clean RSS): its
   parameter + buffer bytes (the 4/8-bit quantization constants reported beside them), which
   modules stay fp32, and the process's peak RSS over loading it and training a hybrid adapter
   for ``--steps`` steps. Targets: NF4 <= 0.35x fp32, int8 <= 0.6x fp32 (parameter + buffer bytes).
2. ``quality``: the offline demo's task (`peft_hybrid.training.demo`: a tiny T5 pre-trained on
   synthetic dialogues, SAMSum-format data) trained with the same seed and steps on the fp32
   base and on its NF4 quantization; held-out ROUGE-L of both (target: within 2 points) and the
   two loss curves.

CPU speed (seconds per training step) is recorded, for information only.

    python bench/quantized.py --shape flan-t5-base --out bench/results/quantized_cpu.json

A quick check of the same code path:

    python bench/quantized.py --shape tiny --steps 2 --quality-train-steps 4 --quality-pretrain-steps 2 \
        --quality-examples 16 --quality-eval-examples 4 --out /tmp/quantized.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    SHAPES,
    environment,
    log,
    make_batch,
    markdown_table,
    peak_memory,
    setup,
    summarize,
    time_reps,
    write_results,
)

HERE = Path(__file__).resolve().parent
VARIANTS = {"fp32": None, "nf4": "bitsandbytes-nf4", "int8": "bitsandbytes"}
TARGETS = {"nf4": 0.35, "int8": 0.6}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="flan-t5-base")
    parser.add_argument("--sections", nargs="+", choices=("memory", "quality"), default=["memory", "quality"])
    parser.add_argument("--steps", type=int, default=10, help="Training steps per memory variant.")
    parser.add_argument("--batch", type=int, default=4, help="Rows per training step of the memory section.")
    parser.add_argument("--src", type=int, default=128, help="Source tokens per row of the memory section.")
    parser.add_argument("--tgt", type=int, default=32, help="Target tokens per row of the memory section.")
    parser.add_argument("--quality-pretrain-steps", type=int, default=300)
    parser.add_argument("--quality-train-steps", type=int, default=200)
    parser.add_argument("--quality-examples", type=int, default=800, help="Training examples (the demo's).")
    parser.add_argument("--quality-eval-examples", type=int, default=64, help="Held-out examples (the demo's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup("cpu", seed=args.seed)
    if args.child is not None:
        print(json.dumps(_memory_child(args)), flush=True)
        return {}
    results: dict = {"shape": args.shape, "targets": TARGETS}
    if "memory" in args.sections:
        results["memory"] = _memory(args)
    if "quality" in args.sections:
        results["quality"] = _quality(args)
    write_results(args.out, results)
    log(json.dumps(_headline(results), indent=2))
    return results


# --- memory ---------------------------------------------------------------------------------------
def _memory(args: argparse.Namespace) -> dict:
    from peft_hybrid.offline import t5_from_preset

    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        base, tokenizer = t5_from_preset(SHAPES[args.shape].preset, seed=args.seed)
        base.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del base
        for name in VARIANTS:
            log(f"memory: {name} in a child process")
            command = [sys.executable, "quantized.py", "--child", name, "--folder", folder]
            command += ["--shape", args.shape, "--steps", str(args.steps), "--batch", str(args.batch)]
            command += ["--src", str(args.src), "--tgt", str(args.tgt), "--seed", str(args.seed)]
            done = subprocess.run(command, cwd=HERE, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"memory child {name} failed:\n{done.stderr[-3000:]}")
            rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    full = rows["fp32"]
    for row in rows.values():
        row["bytes_ratio"] = round(row["param_buffer_bytes"] / full["param_buffer_bytes"], 4)
        row["peak_rss_ratio"] = round(row["peak_rss_mib"] / full["peak_rss_mib"], 4)
        row["step_s_ratio"] = round(row["step_s"] / full["step_s"], 3)
    return rows


def _memory_child(args: argparse.Namespace) -> dict:
    """Load one variant, count its bytes, train ``--steps`` steps; the peak RSS is the whole process's."""
    import dataclasses

    import torch
    from transformers import AutoModelForSeq2SeqLM

    from peft_hybrid import HybridConfig, HybridModel
    from peft_hybrid.modeling.quantization import bnb_config

    quantize = VARIANTS[args.child]
    extra = {} if quantize is None else {"quantization_config": bnb_config(quantize)}
    base = AutoModelForSeq2SeqLM.from_pretrained(str(args.folder), **extra)
    counted = _bytes(base)
    model = HybridModel(base, HybridConfig(mode="hybrid")).train()
    shape = dataclasses.replace(SHAPES[args.shape], batch=args.batch, src=args.src, tgt=args.tgt)
    batch = make_batch(shape, "cpu", seed=args.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {
        **counted,
        "quantization": model.quantization,
        "trainable_params": model.num_parameters(trainable_only=True),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "step_s": round(sorted(times)[len(times) // 2], 4),
    }


def _bytes(model) -> dict:
    """Parameter + buffer bytes as stored, the quantization constants beside them, and the fp32 modules."""
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    stored += sum(b.numel() * b.element_size() for b in model.buffers())
    constants = 0
    fp32 = {}
    seen = set()  # the encoder's and decoder's embed_tokens share the weight of `shared`
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or not hasattr(module, "in_features") and not hasattr(module, "num_embeddings"):
            continue
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        state = getattr(weight, "quant_state", None)
        if state is not None:  # 4-bit: per-block absmax (and, nested, its own constants) + the code book
            tensors = [state.absmax, state.code] + ([state.state2.absmax, state.state2.code] if state.nested else [])
            constants += sum(t.numel() * t.element_size() for t in tensors)
        elif getattr(weight, "SCB", None) is not None:  # 8-bit: one fp32 scale per output row
            constants += weight.SCB.numel() * weight.SCB.element_size()
        elif weight.is_floating_point():
            kind = name.rsplit(".", 1)[-1]
            fp32[kind] = fp32.get(kind, 0) + weight.numel() * weight.element_size()
    return {"param_buffer_bytes": stored, "quant_constant_bytes": constants, "float_bytes_by_module": fp32}


# --- quality --------------------------------------------------------------------------------------
def _quality(args: argparse.Namespace) -> dict:
    from peft_hybrid.training.demo import _pretrain_base, _training_argv, _write_data
    from peft_hybrid.training.recipe import main as run_recipe
    from peft_hybrid.training.recipe import parse_args

    rows = {}
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        log("quality: pre-training the demo's base")
        _pretrain_base(root / "base", args.seed, args.quality_pretrain_steps, progress=False)
        data = _write_data(root / "data", args.seed, args.quality_examples, args.quality_eval_examples)
        for name, flags in (("fp32", []), ("nf4", ["--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4"])):
            log(f"quality: training the hybrid adapter on the {name} base")
            out = root / name
            argv = _training_argv(root / "base", data, out, "hybrid", args.seed, args.quality_train_steps, False)
            start = time.perf_counter()
            result = run_recipe(*parse_args(argv + flags))
            summary = json.loads((out / "training_summary.json").read_text())
            rows[name] = {
                "rougeL": round(float(result["eval"]["eval_rougeL"]), 2),
                "rouge1": round(float(result["eval"]["eval_rouge1"]), 2),
                "loss_curve": [(p["step"], round(p["loss"], 4)) for p in summary["training_curve"]],
                "seconds": round(time.perf_counter() - start, 1),
            }
    rows["rougeL_gap"] = round(rows["nf4"]["rougeL"] - rows["fp32"]["rougeL"], 2)
    return rows


# --- GPU (bench/gpu.py runs this section) ------------------------------------------------------
def run_gpu(shape, device: str, warmup: int, reps: int, deadline: float) -> dict:
    """QLoRA-hybrid train step (time, peak memory) vs the bf16-base step, and mixed-batch generation
    tokens/s on the NF4 base vs the bf16 one. Aims: memory <= 0.4x, time <= 1.5x. Needs CUDA: on the
    CPU it is skipped (bitsandbytes' CPU kernels say nothing about GPU speed)."""
    if device != "cuda":
        return {"skipped": "the quantized section needs a CUDA device", "table": "skipped: needs a CUDA device"}
    import torch

    from peft_hybrid.offline import t5_from_preset

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        base, tokenizer = t5_from_preset(shape.preset, seed=0)
        base.save_pretrained(folder)
        del base
        for name in ("bf16", "nf4"):
            if time.monotonic() > deadline:
                rows.append({"variant": name, "error": "skipped: over the budget"})
                continue
            with peak_memory(device) as memory:
                model = _gpu_model(folder, name)
                step = _train_step(model, make_batch(shape, device))
                times = time_reps(step, device, warmup, reps)
            row = {"variant": f"train {name}", **summarize(times), "peak_mib": round(memory["peak_mib"], 1)}
            generate = _mixed_generate(model, tokenizer, shape, device)
            gen_times = time_reps(generate, device, 1, max(reps // 3, 1))
            row["mixed_tokens_per_s"] = round(shape.batch * shape.new_tokens / summarize(gen_times)["median_s"], 1)
            rows.append(row)
            del model, step, generate
            torch.cuda.empty_cache()
    ok = {r["variant"]: r for r in rows if "median_s" in r}
    if {"train bf16", "train nf4"} <= set(ok):
        bf16, nf4 = ok["train bf16"], ok["train nf4"]
        nf4["time_vs_bf16"] = round(nf4["median_s"] / bf16["median_s"], 3)
        nf4["memory_vs_bf16"] = round(nf4["peak_mib"] / bf16["peak_mib"], 3)
        nf4["tokens_vs_bf16"] = round(nf4["mixed_tokens_per_s"] / bf16["mixed_tokens_per_s"], 3)
    columns = ["variant", "median_s", "peak_mib", "mixed_tokens_per_s", "time_vs_bf16", "memory_vs_bf16"]
    return {"rows": rows, "table": markdown_table(rows, columns + ["tokens_vs_bf16", "error"])}


def _gpu_model(folder: str, name: str):
    """The hybrid model on the bf16 base (the trainer's bf16_frozen_base) or on its NF4 quantization."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from peft_hybrid import HybridConfig, HybridModel
    from peft_hybrid.modeling.quantization import bnb_config
    from peft_hybrid.training.speed import cast_frozen_base_

    config = HybridConfig(mode="hybrid", lora_dropout=0.0)
    if name == "bf16":
        model = HybridModel(AutoModelForSeq2SeqLM.from_pretrained(folder), config)
        return cast_frozen_base_(model, torch.bfloat16).to("cuda")
    quantization = bnb_config("bitsandbytes-nf4", compute_dtype="bfloat16")
    base = AutoModelForSeq2SeqLM.from_pretrained(folder, quantization_config=quantization, device_map={"": 0})
    return HybridModel(base, config)


def _train_step(model, batch):
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _mixed_generate(model, tokenizer, shape, device):
    """A batch whose rows alternate between two adapters and the bare base, fixed length."""
    import torch

    from peft_hybrid import HybridConfig

    for name in ("a", "b"):
        if name not in model.adapters:
            model.add_adapter(name, HybridConfig(mode="hybrid", lora_dropout=0.0, num_virtual_tokens=10))
    model.eval()
    batch = make_batch(shape, device)
    names = [("a", "b", "__base__")[i % 3] for i in range(shape.batch)]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    settings = {"max_new_tokens": shape.new_tokens, "min_new_tokens": shape.new_tokens, "do_sample": False}

    def generate():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model.generate(**inputs, adapter_names=names, **settings)

    return generate


def _headline(results: dict) -> dict:
    line = {}
    for name, row in results.get("memory", {}).items():
        line[f"{name}_bytes_ratio"] = row["bytes_ratio"]
        line[f"{name}_peak_rss_ratio"] = row["peak_rss_ratio"]
    if "quality" in results:
        quality = results["quality"]
        line.update(fp32_rougeL=quality["fp32"]["rougeL"], nf4_rougeL=quality["nf4"]["rougeL"])
    return line | {"environment": environment()["cpu"]}


if __name__ == "__main__":
    main()
