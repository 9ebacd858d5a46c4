"""The package's layout: no import circle between its top-level folders, and the README's tree is `src/`.

Every import counts: module level, inside functions, under ``TYPE_CHECKING``, and module paths
named as strings (the CLI's lazy command table). An entry point (``__main__.py``) is exempt: it
sits above everything and nothing imports it. The package root is the lazy public facade; a name
imported from it counts as an import of the module it lives in.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import peft_hybrid

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "peft_hybrid"
_MODULE_PATH = re.compile(r"peft_hybrid(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, package: str) -> set[str]:
    """Every ``peft_hybrid`` module that ``source`` (a module of ``package``) imports, wherever the import is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            for alias in node.names:
                if module == "peft_hybrid" and alias.name in peft_hybrid._EXPORTS:
                    found.add(f"peft_hybrid.{peft_hybrid._EXPORTS[alias.name]}")
                else:
                    found.add(f"{module}.{alias.name}")  # a submodule, when it is one
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_PATH.fullmatch(node.value):
            found.add(node.value)
    return {m for m in found if m.startswith("peft_hybrid.")}


def _top_level(module: str) -> str | None:
    """The top-level folder or root module of ``peft_hybrid.<top>...``, if it is one."""
    top = module.split(".")[1]
    return top if (PACKAGE / top).is_dir() or (PACKAGE / f"{top}.py").is_file() else None


def folder_graph() -> dict[str, dict[str, list[str]]]:
    """``{folder: {folder it imports: [the importing files]}}`` over the top-level entries of the package."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py" or path.parent == PACKAGE and path.name == "__init__.py":
            continue
        source = _top_level(_module_name(path))
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for module in imported_modules(path.read_text(encoding="utf-8"), package):
            target = _top_level(module)
            if target is not None and target != source and str(path.relative_to(PACKAGE)) not in graph[source][target]:
                graph[source][target].append(str(path.relative_to(PACKAGE)))
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle_between_top_level_folders():
    graph = folder_graph()
    cycle = find_cycle(graph)
    if cycle is not None:
        hops = [f"  {a} -> {b}: {', '.join(sorted(set(graph[a][b])))}" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError(
            "import circle " + " -> ".join(cycle) + "\n" + "\n".join(hops) + "\nMove the shared thing to its one "
            "home below both folders (see ARCHITECTURE.md), rather than hiding the import."
        )


def test_the_cycle_finder_finds_a_circle_and_names_it():
    graph = {"a": {"b": ["a/x.py"]}, "b": {"c": ["b/y.py"]}, "c": {"a": ["c/z.py"]}, "d": {"a": ["d/w.py"]}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ["a/x.py"]}, "b": {}}) is None


def test_every_kind_of_import_is_seen():
    source = """
from typing import TYPE_CHECKING
import peft_hybrid.config
from peft_hybrid import HybridModel, __version__
from ..tasks import get_task
from . import sibling
if TYPE_CHECKING:
    from peft_hybrid.hub.card import CardData
COMMANDS = {"serve": ("peft_hybrid.cli.serve", "a lazily imported module, named as a string")}
def later():
    from peft_hybrid.inference.decoding import decode_texts
"""
    found = imported_modules(source, "peft_hybrid.training")
    tops = {_top_level(m) for m in found} - {None}
    assert tops == {"config", "modeling", "tasks", "training", "hub", "cli", "inference"}, found
    assert "peft_hybrid.modeling.model" in found  # a name of the public facade counts as its home


def _readme_tree() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- layout: tests/test_layout.py[^>]*-->\n```\n(.*?)```", text, re.S)
    assert block, "README.md lost its layout block (<!-- layout: tests/test_layout.py ... --> then a ``` tree)"
    lines = block.group(1).splitlines()
    assert lines[0].strip() == "src/peft_hybrid/", lines[0]
    # One line per entry, indented two spaces under src/peft_hybrid/; continuation lines are indented deeper.
    return [line.split()[0] for line in lines[1:] if re.match(r"  \S", line)]


def test_the_readme_tree_lists_exactly_the_top_level_entries_of_the_package():
    actual = sorted(
        f"{p.name}/" if p.is_dir() else p.name
        for p in PACKAGE.iterdir()
        if not p.name.startswith((".", "__pycache__"))
        and (p.is_dir() and (p / "__init__.py").is_file() or p.suffix == ".py")
    )
    listed = _readme_tree()
    assert len(listed) == len(set(listed)), f"listed twice in the README tree: {listed}"
    assert sorted(listed) == actual, (
        f"README.md's layout tree lists {sorted(listed)}, src/peft_hybrid holds {actual}: "
        "give every top-level folder and root module one line there (and in ARCHITECTURE.md)."
    )


def test_the_readme_tree_lists_each_folder_below_everything_it_imports():
    # The tree reads bottom-up: a newcomer meets each folder after the ones it builds on.
    order = {entry.rstrip("/").removesuffix(".py"): index for index, entry in enumerate(_readme_tree())}
    upward = [
        f"{source} imports {target} ({', '.join(files)})"
        for source, targets in folder_graph().items()
        for target, files in targets.items()
        if order.get(target, -1) > order.get(source, -1)
    ]
    assert upward == [], "README.md's layout tree must list a folder below what it imports; move: " + "; ".join(upward)
