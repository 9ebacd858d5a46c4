"""The README's promises: its quickstart runs as written, and CI runs its test command."""

import ast
import re

import torch

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    block = re.search(r"<!-- quickstart:[^>]*-->\s*```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__quickstart__"}
    exec(compile(block, "README.md quickstart", "exec"), namespace)
    lines = capsys.readouterr().out.strip().splitlines()
    # tiny preset: 12 q/v projections x 4 x (64 + 64) LoRA + 30 x 64 prompt = 8,064 trainable
    assert lines[0].startswith("trainable params: 8,064 || all params: ")
    generated = ast.literal_eval(lines[-1])
    assert isinstance(generated, list) and len(generated) == 1 and isinstance(generated[0], str)
    assert (tmp_path / "outputs" / "quickstart" / "adapter_model.safetensors").is_file()
    # The printed text is the trained model's own output: the saved adapter round-trips.
    model, tokenizer, batch = namespace["model"].eval(), namespace["tokenizer"], namespace["batch"]
    with torch.no_grad():
        trained = tokenizer.batch_decode(model.generate(**batch, max_new_tokens=10), skip_special_tokens=True)
    assert generated == trained


def test_ci_runs_the_readme_test_command_after_linting():
    commands = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    test_line = [line for line in commands.splitlines() if "pytest" in line][0]
    pytest_command = test_line.split("HF_HUB_OFFLINE=1 ", 1)[1].strip()
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert pytest_command in ci_lines
    ci = "\n".join(ci_lines)
    assert "torch==2.13.0" in ci and '-e ".[dev]"' in ci and "HF_HUB_OFFLINE=1" in ci
    assert "python3 -m venv .venv" in ci  # set up from nothing
    lint = ["ruff check src tests bench recipes", "ruff format --check src tests bench recipes"]
    assert all(line in ci_lines for line in lint)
    assert max(ci_lines.index(line) for line in lint) < ci_lines.index(pytest_command)
    assert ci_lines.index('python -m pip install -q -e ".[dev]"') < min(ci_lines.index(line) for line in lint)
