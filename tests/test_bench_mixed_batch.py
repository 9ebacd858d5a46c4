"""bench/mixed_batch.py at the tiny shape, in-process: every variant runs, the mixed batches give the
sub-batches' tokens row for row, and every target ratio is computed (so the bench cannot rot)."""

import json
import sys

import pytest
import torch

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    threads = torch.get_num_threads()
    try:
        import mixed_batch

        out = tmp_path_factory.mktemp("mixed") / "results.json"
        args = ["--shape", "tiny", "--warmup", "1", "--reps", "2", "--threads", "1", "--budget", "none"]
        mixed_batch.main([*args, "--out", str(out)])
        return mixed_batch, json.loads(out.read_text(encoding="utf-8"))
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(REPO_ROOT / "bench"))


def test_every_variant_runs_and_the_mixed_tokens_equal_the_sub_batches(bench_run):
    module, results = bench_run
    rows = {row["variant"]: row for row in results["rows"]}
    assert set(rows) == set(module.variants(module.GEOMETRY["tiny"], "cpu"))
    for row in rows.values():
        assert "error" not in row, row
        assert len(row["times_s"]) == 2 and row["new_tokens_per_s"] > 0
    mixed = [name for name in rows if "mixed" in name]
    assert len(mixed) == 4 and all(rows[name]["same_tokens"] is True for name in mixed)
    assert results["dynamo"]["graph_breaks"] == 0
    assert results["geometry"]["batch"] == 16 and results["adapters"] == module.ADAPTERS


def test_every_target_ratio_is_computed(bench_run):
    module, results = bench_run
    ratios = results["ratios"]
    assert [(r["variant"], r["reference"], r["target"]) for r in ratios] == [tuple(t) for t in module.TARGETS]
    for ratio in ratios:
        assert ratio["paired_ratio"] > 0
        assert ratio["met"] == (None if ratio["target"] is None else ratio["paired_ratio"] >= ratio["target"])
