"""The README's "Many tasks, one base" block runs as written and prints that mixed rows equal rows alone."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_many_tasks_block_runs_as_written(tmp_path):
    block = re.search(r"<!-- many-tasks:[^>]*-->\s*```python\n(.*?)```", README, re.S).group(1)
    result = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "True"
    saved = tmp_path / "outputs" / "tasks"
    for folder in (saved, saved / "sentiment", saved / "sql"):
        assert (folder / "hybrid_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
