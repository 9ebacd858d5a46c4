"""Every private torch and transformers name the package relies on, in one place, each with the reason.

No public API does these, so they are kept here and nowhere else; tests/inference/test_internals.py
checks each against the installed torch and transformers and fails naming the name and the
versions when an upgrade changes one.

- ``nn.Module._call_impl`` / ``_compiled_call_impl``: `fast_generation` compiles the unbound
  ``_call_impl`` (what ``__call__`` runs: forward *and* its hooks, so the per-row LoRA hooks land
  inside the graph), once per architecture rather than per module, and routes one module's calls
  through it by setting the instance's ``_compiled_call_impl``, which ``__call__`` runs when set
  (what the public ``nn.Module.compile()`` sets, with a callable of its own that we cannot share
  between models or bypass for the eager prefill step).
- ``GenerationMixin._previous_max_cache_length``: transformers' ``generate`` remembers the largest
  static cache it built on the model and never builds a smaller one again; the fast path leaves
  that memo as it found it, so that a block leaves the model as it was.
- ``torch._dynamo.config.recompile_limit`` and ``torch._dynamo.utils.counters``: the recompile
  budget of one code object (its default of 8 is too few for a few models times shape buckets),
  and the compile statistics `peft_hybrid.training.speed.dynamo_counters` reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

COMPILED_CALL = "_compiled_call_impl"
STATIC_CACHE_MEMO = "_previous_max_cache_length"
_UNSET = object()


def compile_module_call(**options: Any) -> Callable[..., Any]:
    """``torch.compile`` of the unbound ``nn.Module._call_impl``: call it as ``compiled(module, *args)``."""
    return torch.compile(nn.Module._call_impl, **options)


def eager_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """What ``module(*args, **kwargs)`` runs without a compiled route: forward with its hooks."""
    return module._call_impl(*args, **kwargs)


@contextlib.contextmanager
def routed_calls(routes: Mapping[nn.Module, Callable[..., Any] | None]) -> Iterator[None]:
    """Inside the block, ``module(...)`` runs ``routes[module](...)`` (``None``: the eager path).

    Each module's own compiled route (from ``nn.Module.compile()``) is put back on exit.
    """
    saved = {module: vars(module).get(COMPILED_CALL, _UNSET) for module in routes}
    try:
        for module, route in routes.items():
            setattr(module, COMPILED_CALL, route)
        yield
    finally:
        for module, impl in saved.items():
            if impl is _UNSET:
                vars(module).pop(COMPILED_CALL, None)
            else:
                setattr(module, COMPILED_CALL, impl)


@contextlib.contextmanager
def static_cache_memo_kept(model: nn.Module) -> Iterator[None]:
    """The largest static cache ``generate`` remembers for ``model`` is, after the block, what it was before."""
    saved = vars(model).get(STATIC_CACHE_MEMO, _UNSET)
    try:
        yield
    finally:
        if saved is _UNSET:
            vars(model).pop(STATIC_CACHE_MEMO, None)
        else:
            setattr(model, STATIC_CACHE_MEMO, saved)


def recompile_limit(limit: int) -> contextlib.AbstractContextManager:
    """Dynamo may compile one code object up to ``limit`` times inside the block."""
    return torch._dynamo.config.patch(recompile_limit=limit)


def compile_counters() -> dict[str, Any]:
    """Dynamo's process-wide compile statistics (``frames``, ``stats``, ``graph_break``, ...)."""
    from torch._dynamo.utils import counters

    return counters
