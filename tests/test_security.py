"""Static guarantees: no pickle on any load path, no remote code, safetensors only."""

import re

from conftest import REPO_ROOT

SOURCES = sorted((REPO_ROOT / "src" / "peft_hybrid").rglob("*.py")) + sorted((REPO_ROOT / "recipes").rglob("*.py"))


def _code_lines():
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.split("#", 1)[0]
            if stripped.strip():
                yield path.relative_to(REPO_ROOT), number, stripped


def test_the_scan_sees_the_package():
    assert any(p.name == "model.py" for p in SOURCES) and len(SOURCES) > 10


def test_no_pickle_on_any_load_path():
    offenders = []
    for path, number, line in _code_lines():
        if re.search(r"\btorch\.load\(", line) and "weights_only=True" not in line:
            offenders.append(f"{path}:{number}: torch.load without weights_only=True")
        if re.search(
            r"\b(import\s+(c?pickle|joblib|dill)|from\s+(c?pickle|joblib|dill)\s+import|pickle\.loads?\(|joblib\.load\()",
            line,
        ):
            offenders.append(f"{path}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_remote_code_is_never_trusted():
    offenders = [f"{p}:{n}" for p, n, line in _code_lines() if re.search(r"trust_remote_code\s*=\s*True", line)]
    assert not offenders, offenders


def test_weights_are_written_as_safetensors_only():
    offenders = [
        f"{p}:{n}: {line.strip()}"
        for p, n, line in _code_lines()
        if re.search(r"\btorch\.save\(|safe_serialization\s*=\s*False|\.bin[\"']", line)
    ]
    assert not offenders, "\n".join(offenders)
