"""The server's adapters on its one base: which ``adapter_id`` a request may name, loading, LRU eviction.

Adapters named on the command line (``--adapter NAME=PATH_OR_REPO``) load at startup. With
``--lazy-adapters``, a request may also name a Hub repo id or folder matching an
``--allow-adapter`` pattern (shell-style, e.g. ``my-org/*``); it loads on first use. With
``--max-adapters N`` at most N stay loaded: loading one more evicts the least recently used
adapter that no running batch holds (an evicted adapter loads again when next asked for).

Adapters may also be added and removed at runtime (``POST /v1/load_lora_adapter``): `add`
registers a name for a source an ``--allow-adapter`` pattern allows, `remove` unregisters it, and
the worker loads (`load_now`) or unloads (`unload`) it.

A pattern is a folder pattern when it starts with ``/``, ``./``, ``../`` or ``~`` and a Hub id
pattern otherwise. A folder matches after it is resolved (``..`` removed, symlinks followed), one
path segment per ``*``, so ``DIR/*`` matches neither ``DIR/../outside/x`` nor a link in ``DIR``
to a folder outside it. A Hub id must be a valid repo id (no ``..``) and must not also name a
local folder.

Only the batch worker calls `acquire`, `release`, `attach`, `load_now` and `unload`: it owns the model,
so adapters change between steps, never during one. `fetch` (the download, for a Hub id) touches no
model state, so the continuous scheduler runs it in a loader thread while the batch keeps stepping.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from peft_hybrid.config import HybridConfig
from peft_hybrid.modeling.mixed import BASE_ADAPTER
from peft_hybrid.serve.requests import RequestError

logger = logging.getLogger("peft_hybrid.serve")

# The model's active adapter holds nothing (mode none), so every served adapter can be evicted.
IDLE_ADAPTER = "__idle__"


class AdapterBusy(Exception):
    """Every loaded adapter is held by the running batch; the caller runs what it has, then retries."""


class AdapterCache:
    """Maps each request's ``adapter_id`` to an adapter loaded on ``model`` (loading it if allowed)."""

    def __init__(
        self,
        model,
        sources: dict[str, str],
        *,
        allow: Sequence[str] = (),
        max_adapters: int | None = None,
        on_load=None,
    ) -> None:
        self.model = model
        self.on_load = on_load  # callback(adapter_id) for the metrics
        self.sources = dict(sources)
        self.allow = list(allow)
        self._folder_patterns = [_resolve_pattern(p) for p in self.allow if _is_folder(p)]
        self._hub_patterns = [p for p in self.allow if not _is_folder(p)]
        self.lazy = True  # requests may name allowed sources (--lazy-adapters); runtime loading needs only `allow`
        self._draining: set[str] = set()
        self.max_adapters = max_adapters
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter_id -> name on the model, LRU first
        self._configs: dict[str, HybridConfig] = {}  # the event loop reads these, never the model itself
        self._in_use: dict[str, int] = {}
        self._bytes: dict[str, int] = {}  # adapter_id -> bytes of its tensors, for /info
        self._lock = threading.Lock()  # the event loop reads what the worker thread changes

    # --- the event loop's side: is this id servable, and with which config --------------------
    def check(self, adapter_id: str) -> None:
        """Refuse an ``adapter_id`` the server cannot serve, naming the ones it can."""
        if adapter_id in self._draining:
            raise RequestError(f"adapter {adapter_id!r} is being unloaded.", status=404, error_type="not_found")
        if adapter_id == BASE_ADAPTER or adapter_id in self.sources:
            return
        if self.lazy and self.allow and self.resolve(adapter_id, quiet=True) is not None:
            return
        lazy = f"; lazily loaded ids must match {self.allow}" if self.allow else ""
        raise RequestError(
            f"Unknown adapter_id {adapter_id!r}: loaded adapters are {sorted(self.loaded())} "
            f"(leave adapter_id unset for the base){lazy}."
        )

    def config(self, adapter_id: str) -> HybridConfig | None:
        """The config of a loaded adapter (``None`` for the base); KeyError when not loaded now."""
        if adapter_id == BASE_ADAPTER:
            return None
        with self._lock:
            return self._configs[adapter_id]

    def is_loaded(self, adapter_id: str) -> bool:
        with self._lock:
            return adapter_id == BASE_ADAPTER or adapter_id in self._configs

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def describe(self) -> list[dict]:
        """What ``/info`` lists: every servable adapter id, its task and mode when loaded."""
        with self._lock:
            ids = list(dict.fromkeys([*self.sources, *self._loaded]))
            rows = []
            for adapter_id in ids:
                config = self._configs.get(adapter_id)
                rows.append(
                    {
                        "id": adapter_id,
                        "loaded": config is not None,
                        "task": config.task if config else None,
                        "mode": config.mode if config else None,
                        "memory_bytes": self._bytes.get(adapter_id),
                    }
                )
            return rows

    # --- the worker's side ----------------------------------------------------------------
    def load_configured(self) -> None:
        """Load every ``--adapter`` now (startup), so that a bad one stops the server before it serves."""
        if self.max_adapters is not None and len(self.sources) > self.max_adapters:
            raise ValueError(
                f"--max-adapters {self.max_adapters} is fewer than the {len(self.sources)} --adapter given; "
                "raise --max-adapters or name fewer adapters."
            )
        for adapter_id in self.sources:
            self._load(adapter_id)

    def acquire(self, adapter_id: str) -> str:
        """The model's name for ``adapter_id``, loaded and held until `release`; ``__base__`` for the base."""
        if adapter_id == BASE_ADAPTER:
            return BASE_ADAPTER
        with self._lock:
            name = self._loaded.get(adapter_id)
            if name is not None:
                self._loaded.move_to_end(adapter_id)
        if name is None:
            self.check(adapter_id)
            name = self._load(adapter_id)
        self._in_use[name] = self._in_use.get(name, 0) + 1
        return name

    def release(self, name: str) -> None:
        if name != BASE_ADAPTER:
            self._in_use[name] -= 1

    def fetch(self, adapter_id: str):
        """Where ``adapter_id``'s files are on this machine (downloading them from the Hub if needed).

        Touches no model state: safe in a thread other than the worker's. Returns what `attach` takes.
        """
        from peft_hybrid.hub.download import resolve_folder

        self.check(adapter_id)
        source = self.sources.get(adapter_id) or self.resolve(adapter_id)
        try:
            return resolve_folder(source)
        except Exception as err:
            raise RequestError(f"adapter {adapter_id!r} could not be loaded: {err}") from err

    def attach(self, adapter_id: str, folder) -> str:
        """Load the fetched ``folder`` as ``adapter_id`` (evicting the least recently used if full)."""
        with self._lock:
            if adapter_id in self._loaded:
                return self._loaded[adapter_id]
        return self._load(adapter_id, folder)

    def _load(self, adapter_id: str, source=None) -> str:
        self._make_room()
        source = source if source is not None else (self.sources.get(adapter_id) or self.resolve(adapter_id))
        name = adapter_id if adapter_id in self.sources else _model_name(adapter_id)
        try:
            self.model.load_adapter(source, name)
            _match_base_dtype(self.model, name)
            from peft_hybrid.serve.formatting import generation_defaults

            generation_defaults(self.model.adapters[name])  # refuse a task the server cannot generate for
        except Exception as err:
            if name in self.model.adapters:
                self.model.delete_adapter(name)
            raise RequestError(f"adapter {adapter_id!r} could not be loaded: {err}") from err
        with self._lock:
            self._loaded[adapter_id] = name
            self._configs[adapter_id] = self.model.adapters[name]
            self._bytes[adapter_id] = sum(
                t.numel() * t.element_size() for t in self.model.adapter_tensors(name).values()
            )
        if self.on_load is not None:
            self.on_load(adapter_id)
        logger.info("loaded adapter %r (%s)", adapter_id, self.model.adapters[name].mode)
        return name

    def _make_room(self) -> None:
        if self.max_adapters is None or len(self._loaded) < self.max_adapters:
            return
        with self._lock:
            idle = [a for a, name in self._loaded.items() if not self._in_use.get(name)]
            if not idle:
                raise AdapterBusy
            victim = idle[0]
            name = self._loaded.pop(victim)
            del self._configs[victim]
            self._bytes.pop(victim, None)
        self.model.delete_adapter(name)
        self._in_use.pop(name, None)
        logger.info("evicted adapter %r (least recently used)", victim)

    # --- runtime management -------------------------------------------------------------
    def resolve(self, source: str, *, quiet: bool = False) -> str | None:
        """The folder (resolved) or Hub id ``source`` names, when an ``--allow-adapter`` pattern allows it.

        Refused (403, or ``None`` with ``quiet``) otherwise, naming the patterns.
        """
        found = None
        if "\x00" in source:  # no path or Hub id holds one; os.path would raise on it
            pass
        elif _is_folder(source) or (os.path.exists(source) and not self._hub_patterns):
            path = PurePosixPath(os.path.realpath(os.path.expanduser(source)))
            if any(path.match(pattern) for pattern in self._folder_patterns):
                found = str(path)
        elif _is_hub_id(source) and not os.path.exists(source):
            if any(fnmatch.fnmatchcase(source, pattern) for pattern in self._hub_patterns):
                found = source
        if found is None and not quiet:
            raise RequestError(
                f"{source!r} matches no --allow-adapter pattern ({self.allow or 'none given'}); folders match "
                "once resolved (no '..', symlinks followed), Hub ids as owner/name.",
                status=403,
                error_type="forbidden",
            )
        return found

    def add(self, name: str, source: str) -> None:
        """Register adapter ``name`` for an allowed ``source`` (the worker then loads it with `load_now`)."""
        if not _NAME.match(name) or name.startswith("__"):
            raise RequestError(f"`lora_name` {name!r}: use letters, digits, '_' and '-' (not starting with '__').")
        with self._lock:
            if name in self.sources or name in self._loaded or name in self._draining:
                raise RequestError(f"adapter {name!r} is already loaded; unload it first.", status=400)
            self.sources[name] = self.resolve(source)

    def load_now(self, name: str, folder) -> None:
        """Load a registered adapter from its fetched ``folder`` (worker); a bad one is unregistered and refused."""
        try:
            self.attach(name, folder)
        except AdapterBusy:
            raise
        except Exception:
            self.forget(name)
            raise

    def forget(self, name: str) -> None:
        """Unregister a runtime adapter that never loaded."""
        with self._lock:
            self.sources.pop(name, None)

    def drain(self, name: str) -> None:
        """Refuse new requests for ``name`` from now on (its rows in flight keep running)."""
        with self._lock:
            if name not in self.sources and name not in self._loaded:
                raise RequestError(f"adapter {name!r} is not loaded.", status=404, error_type="not_found")
            self._draining.add(name)

    def unload(self, name: str) -> None:
        """Unregister and delete ``name`` from the model (worker; its rows have finished)."""
        with self._lock:
            self.sources.pop(name, None)
            model_name = self._loaded.pop(name, None)
            self._configs.pop(name, None)
            self._bytes.pop(name, None)
            self._draining.discard(name)
        if model_name is not None:
            self.model.delete_adapter(model_name)
            self._in_use.pop(model_name, None)
            logger.info("unloaded adapter %r", name)


_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _is_folder(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..")


def _is_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and ".." not in text


def _resolve_pattern(pattern: str) -> str:
    """The pattern with its fixed leading folders resolved (symlinks followed), its glob segments kept."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    root = os.path.realpath(os.path.join(*parts[:fixed])) if fixed else os.path.realpath(".")
    return str(PurePosixPath(root, *parts[fixed:]))


def _match_base_dtype(model, name: str) -> None:
    """A served adapter computes in the base's dtype (``--dtype``): it is not trained here."""
    dtype = model.base_model.get_input_embeddings().weight.dtype
    for tensor in model.adapter_tensors(name).values():
        if tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)


def _model_name(adapter_id: str) -> str:
    """A model adapter name for a Hub id or path: readable, and distinct for distinct ids."""
    digest = hashlib.sha256(adapter_id.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', adapter_id)[-48:]}-{digest}"
