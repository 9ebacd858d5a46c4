"""The built wheel is the package: every file under src/peft_hybrid is in it (the model-card template
and any other package data included) and nothing else is (no tests, no checkout files). An editable
install reads the source tree, so only a real wheel shows what a plain ``pip install`` gets; .ci/run
also installs that wheel in a fresh venv and uses it (tests/wheel_smoke.py)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
PACKAGE = SRC / "peft_hybrid"
TEMPLATE = "peft_hybrid/hub/model_cards/adapter_card.md"


def _package_files() -> dict[str, bytes]:
    """Every file under src/peft_hybrid (through any symlink), by its path in a wheel."""
    files = {}
    for folder, dirs, names in os.walk(PACKAGE, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            path = Path(folder) / name
            files[path.relative_to(SRC).as_posix()] = path.read_bytes()
    return files


def _not_source(folder: str, names: list[str]) -> list[str]:
    """What a checkout may hold besides the project: build outputs, caches, venvs, VCS data."""
    top = Path(folder) == REPO_ROOT
    return [
        name
        for name in names
        if name == "__pycache__"
        or name.endswith(".egg-info")
        or (top and (name.startswith(".") or name in {"build", "dist", "outputs", "runs", "shared"}))
    ]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources, and a stale
    # build/lib left by an earlier build would put files in the wheel that the sources no longer have.
    checkout = tmp / "checkout"
    shutil.copytree(REPO_ROOT, checkout, symlinks=True, ignore=_not_source)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir"]
    built = subprocess.run(
        [*command, "-q", "-w", str(tmp / "dist"), str(checkout)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (tmp / "dist").glob("peft_hybrid-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


@pytest.mark.slow
def test_the_wheel_holds_every_package_file_and_nothing_else(wheel):
    names = wheel.namelist()
    in_wheel = {name for name in names if name.startswith("peft_hybrid/")}
    assert in_wheel == set(_package_files()), (
        f"missing from the wheel (declare them in pyproject.toml's package-data): "
        f"{sorted(set(_package_files()) - in_wheel)}; in the wheel but not under src/peft_hybrid: "
        f"{sorted(in_wheel - set(_package_files()))}"
    )
    others = {name.split("/")[0] for name in names} - {"peft_hybrid"}
    assert others == {"peft_hybrid-0.1.0.dist-info"}  # no tests/, no top-level modules
    entry_points = wheel.read("peft_hybrid-0.1.0.dist-info/entry_points.txt").decode()
    assert "peft-hybrid = peft_hybrid.cli:main" in entry_points


@pytest.mark.slow
def test_the_card_template_is_in_the_wheel_as_it_is_in_the_sources(wheel):
    assert wheel.read(TEMPLATE) == _package_files()[TEMPLATE]


def test_the_template_is_package_data_read_through_importlib_resources():
    from importlib.resources.abc import Traversable

    from peft_hybrid.hub import card

    assert isinstance(card.TEMPLATE, Traversable)
    assert card.TEMPLATE.read_bytes() == (SRC / TEMPLATE).read_bytes()


@pytest.mark.slow
def test_an_adapter_saves_with_its_card_and_reloads_from_the_unpacked_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    wheel.extractall(site)  # a pure-Python wheel installs by unpacking
    # PYTHONPATH replaced, not extended, and run outside the checkout: the sources are not importable.
    env = {**os.environ, "PYTHONPATH": str(site)}
    smoke = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "wheel_smoke.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert f"from {(site / 'peft_hybrid').resolve()}" in smoke.stdout


def test_src_holds_no_symlink_and_the_template_has_one_real_copy():
    links = [path for path in PACKAGE.rglob("*") if path.is_symlink()]
    assert links == [], f"a link inside src/ reaches outside the package a wheel installs: {links}"
    # The top-level model_cards/ is a link into the package, for finding the template from the top.
    top = REPO_ROOT / "model_cards"
    assert top.is_symlink() and top.resolve() == (SRC / TEMPLATE).parent


def test_ci_installs_the_wheel_in_a_fresh_venv_beside_the_suite():
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    suite = next(i for i, line in enumerate(ci) if line.startswith("python -m pytest"))
    # started before the suite, in the background; its exit status decides CI after the suite
    smoke = next(i for i, line in enumerate(ci) if line.startswith(".ci/wheel_smoke"))
    assert smoke < suite and ci[smoke].endswith("&") and ci[smoke + 1] == "smoke=$!"
    assert 'wait "$smoke"' in ci[suite + 1 :] and "set -euo pipefail" in ci
    script = REPO_ROOT / ".ci" / "wheel_smoke"
    smoke = script.read_text(encoding="utf-8")
    steps = [
        "set -euo pipefail",
        'python3 -m venv "$work/venv"',
        '"$work/venv/bin/python" -m pip install -q torch==2.13.0',  # pinned before the wheel pulls its own
        '"$work/venv/bin/python" -m pip install -q "$wheel[serve]"',  # not editable
        'cd "$work"',  # outside the checkout: the sources are not importable
        'venv/bin/python "$checkout/tests/wheel_smoke.py"',
        "venv/bin/peft-hybrid --help >/dev/null",
        "venv/bin/python -m peft_hybrid.serve --help >/dev/null",
    ]
    lines = [line.strip() for line in smoke.splitlines()]
    assert [lines.index(step) for step in steps] == sorted(lines.index(step) for step in steps)
    assert os.access(script, os.X_OK)
