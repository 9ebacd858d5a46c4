"""The private torch and transformers names the package relies on still mean what it relies on.

When one of these fails after an upgrade, `peft_hybrid.inference._internals` (the only module that
touches them) needs a change; the message names the name and the installed versions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch
import transformers
from torch import nn

from peft_hybrid.inference import _internals
from peft_hybrid.offline import t5_from_preset

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "peft_hybrid"
VERSIONS = f"torch {torch.__version__}, transformers {transformers.__version__}"


def _broken(name: str, what: str) -> str:
    return f"{name} no longer {what} with {VERSIONS}: update peft_hybrid/inference/_internals.py"


def test_a_module_call_runs_the_compiled_route_when_one_is_set():
    layer = nn.Linear(2, 2)
    x = torch.ones(1, 2)
    assert hasattr(nn.Module, "_call_impl"), _broken("nn.Module._call_impl", "exists")
    with _internals.routed_calls({layer: lambda *args: "routed"}):
        assert layer(x) == "routed", _broken(f"nn.Module.{_internals.COMPILED_CALL}", "routes __call__")
    assert _internals.COMPILED_CALL not in vars(layer) and torch.equal(layer(x), layer.forward(x))
    calls = []
    layer.register_forward_hook(lambda module, args, out: calls.append(1))
    assert torch.equal(_internals.eager_call(layer, x), layer.forward(x)) and calls == [1], _broken(
        "nn.Module._call_impl", "runs forward with its hooks"
    )


def test_a_compiled_module_call_serves_any_module_and_its_own_compile_comes_back():
    compiled = _internals.compile_module_call(backend="eager")
    layer = nn.Linear(2, 2)
    x = torch.ones(1, 2)
    assert torch.equal(compiled(layer, x), layer(x)), _broken("torch.compile(nn.Module._call_impl)", "calls a module")
    layer.compile(backend="eager")
    own = vars(layer)[_internals.COMPILED_CALL]
    with _internals.routed_calls({layer: None}):
        assert vars(layer)[_internals.COMPILED_CALL] is None
    assert vars(layer)[_internals.COMPILED_CALL] is own, _broken("nn.Module.compile", "sets _compiled_call_impl")


def test_generate_with_a_static_cache_remembers_its_length_where_we_restore_it():
    model, tokenizer = t5_from_preset("tiny")
    batch = tokenizer(["Amy: hi"], return_tensors="pt")
    with _internals.static_cache_memo_kept(model):
        model.generate(**batch, max_new_tokens=2, cache_implementation="static", max_cache_len=16)
        assert vars(model).get(_internals.STATIC_CACHE_MEMO) == 16, _broken(
            f"GenerationMixin.{_internals.STATIC_CACHE_MEMO}", "records the static cache length"
        )
    assert _internals.STATIC_CACHE_MEMO not in vars(model)


def test_dynamo_s_recompile_limit_and_counters():
    before = torch._dynamo.config.recompile_limit
    with _internals.recompile_limit(before + 5):
        assert torch._dynamo.config.recompile_limit == before + 5, _broken("torch._dynamo.config", "has it")
    counters = _internals.compile_counters()
    assert all(key in counters or hasattr(counters, "__missing__") for key in ("frames", "stats", "graph_break"))


def test_no_other_module_touches_a_private_torch_or_transformers_name():
    private = re.compile(r"\b(torch|transformers|nn)\._\w+|_compiled_call_impl|\b_call_impl\b|_previous_max_cache")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_internals.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) in docstrings:
                continue
            if isinstance(node, (ast.Attribute, ast.ImportFrom, ast.Constant)) and private.search(
                ast.unparse(node) if not isinstance(node, ast.ImportFrom) else f"{node.module}"
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == [], f"keep private torch/transformers names in inference/_internals.py: {sorted(set(found))}"
