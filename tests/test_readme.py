"""The README's promises: its quickstart runs as written, and CI runs its test command."""

import os
import re
import subprocess
import sys

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_quickstart_runs_as_written(tmp_path):
    block = re.search(r"<!-- quickstart:[^>]*-->\s*```python\n(.*?)```", README, re.S).group(1)
    result = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # tiny preset: 12 q/v projections x 4 x (64 + 64) LoRA + 30 x 64 prompt
    assert "trainable params: 8,064" in result.stdout
    assert (tmp_path / "outputs" / "quickstart" / "adapter_model.safetensors").is_file()
    assert re.search(r"\[.*\]", result.stdout.strip().splitlines()[-1])


def test_ci_runs_the_readme_test_command():
    commands = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    test_line = [line for line in commands.splitlines() if "pytest" in line][0]
    pytest_command = test_line.split("HF_HUB_OFFLINE=1 ", 1)[1].strip()
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert pytest_command in ci.splitlines()
    assert "torch==2.13.0" in ci and '-e ".[dev]"' in ci and "HF_HUB_OFFLINE=1" in ci
