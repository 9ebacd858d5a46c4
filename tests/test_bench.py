"""The GPU benchmark's code path, run on CPU at the tiny shape: GPU time is scarce, so a broken
bench must show up here, not on the lent machine."""

import json
import statistics
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

BENCH = REPO_ROOT / "bench"

pytestmark = pytest.mark.slow
STOCK = "stock hybrid (hand-assembled)"


@pytest.fixture(scope="module")
def gpu_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-smoke")
    command = [
        sys.executable,
        str(BENCH / "gpu.py"),
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--compile-backend",
        "eager",
        "--threads",
        "1",  # two threads contend on a busy machine (seconds per tiny step instead of milliseconds)
        "--warmup",
        "1",
        "--train-reps",
        "2",
        "--gen-reps",
        "2",
        "--budget",
        "none",  # every variant and rep, however busy the machine: the test checks the code path, not speed
        "--serving-clients",
        "4",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=BENCH, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text(encoding="utf-8")), (out / "results.md").read_text(
        encoding="utf-8"
    )


def _rows(section):
    return {row["variant"]: row for row in section["rows"]}


def test_every_section_measures_every_variant(gpu_smoke):
    results, markdown = gpu_smoke
    train, generation, compiled = (_rows(results[name]) for name in ("train", "generation", "compiled"))
    assert set(train) == {"stock PEFT LoRA", "peft_hybrid lora", "stock hybrid (hand-assembled)", "peft_hybrid hybrid"}
    assert set(compiled) == {"stock hybrid (hand-assembled)", "peft_hybrid hybrid bf16-base+compile"}
    assert len(generation) == 9 and "plain base, source + 30 tokens" in generation
    fast = {name for name in generation if name.endswith(", fast_generation")}
    assert fast == {f"{name}, fast_generation" for name in ("plain base", STOCK, "peft_hybrid hybrid merged")}
    for row in [*train.values(), *generation.values(), *compiled.values()]:
        assert "error" not in row, row
        assert len(row["times_s"]) == 2 and row["median_s"] > 0
    assert {"## train", "## generation", "## quantized", "## compiled"} <= set(markdown.splitlines())
    # bitsandbytes' CPU kernels say nothing about GPU speed: the QLoRA section waits for a GPU.
    assert results["quantized"]["skipped"] == "the quantized section needs a CUDA device"


def test_trainable_counts_and_ratios_are_like_for_like(gpu_smoke):
    results, _ = gpu_smoke
    train, compiled = _rows(results["train"]), _rows(results["compiled"])
    assert train["peft_hybrid lora"]["trainable"] == train["stock PEFT LoRA"]["trainable"]
    assert train["peft_hybrid hybrid"]["trainable"] == train["stock hybrid (hand-assembled)"]["trainable"]
    assert compiled["peft_hybrid hybrid bf16-base+compile"]["trainable"] == train["peft_hybrid hybrid"]["trainable"]
    assert train["peft_hybrid hybrid"]["ratio_vs"].endswith("x stock hybrid (hand-assembled)")
    assert results["compiled"]["dynamo"]["after"]["graph_breaks"] == 0


def test_generation_merged_tokens_equal_unmerged_and_work_is_counted(gpu_smoke):
    generation = _rows(gpu_smoke[0]["generation"])
    merged = generation["peft_hybrid hybrid merged"]
    assert merged["same_tokens_as_eager"] is True
    # The prompt adds matmul work; merging removes LoRA's share of it.
    base, stock = generation["plain base"]["gflops"], generation[STOCK]["gflops"]
    assert base < merged["gflops"] < stock
    # The control reads as many encoder positions: the same work, up to the merge's own B @ A.
    control = generation["plain base, source + 30 tokens"]["gflops"]
    assert control <= merged["gflops"] < 1.01 * control
    # Paired speed-ups are the median of per-rep time ratios against each reference row.
    references = {
        "paired_vs_base": "plain base",
        "paired_vs_stock": "stock hybrid (hand-assembled)",
        "paired_vs_same_length": "plain base, source + 30 tokens",
    }
    for key, reference in references.items():
        ratios = [t / o for o, t in zip(merged["times_s"], generation[reference]["times_s"])]
        assert merged[key] == pytest.approx(statistics.median(ratios), rel=1e-12)


def test_the_serving_section_runs_the_fast_continuous_and_static_servers(gpu_smoke):
    results, markdown = gpu_smoke
    serving = results["serving"]
    order = ["static", "continuous", "continuous-fast"]
    assert [r["scheduler"] for r in serving["rows"]] == order + order[::-1]  # two rounds, interleaved
    assert all(r["errors"] == 0 and r["requests"] == 16 and r["tokens_per_s"] > 0 for r in serving["rows"])
    rate = serving["tokens_per_s"]
    assert serving["fast_over_static"] == rate["continuous-fast"] / rate["static"]
    assert "## serving" in markdown and "--fast over static" in markdown


def test_serve_bench_runs_every_workload_on_every_scheduler_with_offline_answers(tmp_path):
    """bench/serve.py at the tiny size with --fast: every workload on the three servers, no errors, offline's
    greedy text, seeded samples reproduced on both continuous servers."""
    out = tmp_path / "serve.json"
    command = [
        sys.executable,
        str(BENCH / "serve.py"),
        "--shape",
        "tiny",
        "--size",
        "tiny",
        "--fast",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=BENCH, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    rows = {(r["workload"], r["scheduler"]): r for r in result["rows"]}
    for workload in ("open_alone", "open_mixed", "closed_mixed", "closed_uniform"):
        assert {(workload, "continuous"), (workload, "static"), (workload, "continuous-fast")} <= set(rows)
    assert {("adapters_many", "continuous"), ("adapters_4", "continuous")} <= set(rows)
    assert all(row["errors"] == 0 and row["requests"] > 0 for row in rows.values())
    assert result["greedy_answers_checked"] > 0 and result["greedy_mismatches_vs_offline"] == 0
    assert result["seeded_sampled_reproduced"] == result["seeded_sampled_sent"] == 8
    assert result["continuous-fast_seeded_sampled_reproduced"] == 8
    fast, eager = rows[("closed_uniform", "continuous-fast")], rows[("closed_uniform", "continuous")]
    assert result["closed_uniform_tokens_per_s_fast_over_continuous"] == fast["tokens_per_s"] / eager["tokens_per_s"]
    many, four = rows[("adapters_many", "continuous")], rows[("adapters_4", "continuous")]
    assert result["many_over_4_adapters_tokens_per_s"] == many["tokens_per_s"] / four["tokens_per_s"]
    assert many["requests"] == four["requests"] == result["sizes"]["many"]  # one request per adapter
    # every adapter resident, each as large as the others (the same shapes), as /info reports them
    assert result["adapters_loaded"] == result["sizes"]["many"]
    assert result["adapter_bytes_total"] == result["adapters_loaded"] * result["adapter_bytes_min"]
    assert result["adapter_bytes_min"] == result["adapter_bytes_max"] > 0


def test_fast_generation_rows_match_eager_tokens_and_pair_like_with_like(gpu_smoke):
    section = gpu_smoke[0]["generation"]
    generation = _rows(section)
    for name in ("plain base", STOCK, "peft_hybrid hybrid merged"):
        row = generation[f"{name}, fast_generation"]
        assert row["same_tokens_as_eager"] is True, name
        assert row["paired_vs_eager"] > 0, name
    merged = generation["peft_hybrid hybrid merged, fast_generation"]
    assert merged["ratio_vs"].endswith(f"x {STOCK}, fast_generation")
    assert merged["paired_vs_stock"] > 0 and merged["paired_vs_base"] > 0
    assert section["dynamo"]["after"]["graph_breaks"] == section["dynamo"]["before"]["graph_breaks"] == 0
