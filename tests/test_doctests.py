"""Every docstring example in peft_hybrid runs, module by module, in a temporary directory."""

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import peft_hybrid


def _modules() -> list[str]:
    """Every module of the package whose source has a ``>>>`` line (read, not imported, so
    collecting stays cheap)."""
    names = [peft_hybrid.__name__]
    names += [info.name for info in pkgutil.walk_packages(peft_hybrid.__path__, prefix=f"{peft_hybrid.__name__}.")]
    return sorted(n for n in names if ">>>" in Path(importlib.util.find_spec(n).origin).read_text(encoding="utf-8"))


MODULES = _modules()


def test_the_walk_finds_every_module_with_examples():
    sources = [p for p in Path(peft_hybrid.__file__).parent.rglob("*.py") if ">>>" in p.read_text(encoding="utf-8")]
    assert len(MODULES) == len(sources) > 25
    assert {"peft_hybrid.tasks.samsum", "peft_hybrid.interpret.heatmap"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name) if t.examples]
    assert tests, f"{name} has '>>>' in its source but no example doctest can find"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for index, test in enumerate(tests):
        # Each docstring runs in a fresh empty folder: examples write runs/, outputs/ and the like.
        folder = tmp_path / str(index)
        folder.mkdir()
        monkeypatch.chdir(folder)
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples in {name} failed (see output)"
