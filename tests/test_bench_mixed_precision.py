"""bench/mixed_precision_rows.py at a tiny size, in-process: it runs, and in fp32 every row equals itself alone."""

import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_the_counts_cover_every_row_and_fp32_rows_all_equal_themselves_alone(capsys):
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import mixed_precision_rows

        results = mixed_precision_rows.main(["--rows", "4", "--new-tokens", "3"])
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    assert results["float32"] == {"mixed": 4, "plain": 4, "plain_same_length": 4, "mixed_equals_same_length_plain": 4}
    assert set(results["bfloat16"]) == set(results["float32"])
    assert all(0 <= count <= 4 for count in results["bfloat16"].values())
    assert "bfloat16: rows equal alone: mixed" in capsys.readouterr().out
