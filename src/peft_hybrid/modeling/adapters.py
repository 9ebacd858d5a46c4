"""The named adapters of a `HybridModel`: add, load, switch, delete; one base for all of them.

Each adapter has its own `HybridConfig` and owns only its parts (`peft_hybrid.modeling.parts`):
LoRA or DoRA matrices under its name in the base's PEFT LoRA layers, a soft prompt in
``HybridModel.prompts[name]``. Adding one never copies the base. Exactly one adapter is *active*:
it is what ``forward``/``generate`` without ``adapter_names`` use, what training updates (only
its tensors require grad, whatever is added or loaded beside it), and what ``save_pretrained``
writes by default.

Modes ``prompt``, ``lora`` and ``hybrid`` mix freely; ``none`` is an adapter with no parts (a row
using it runs the bare base, like ``__base__``). ``full`` trains every base weight, so a model
built with mode ``full`` holds that one adapter and refuses any other: adapters are checked
against a fixed, frozen base.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft.utils import CONFIG_NAME as PEFT_CONFIG_NAME
from torch import nn

from peft_hybrid.config import CONFIG_NAME, HybridConfig
from peft_hybrid.modeling.loading import record_base
from peft_hybrid.modeling.lora import lora_layers, set_active
from peft_hybrid.modeling.mixed import BASE_ADAPTER
from peft_hybrid.modeling.parts import AdapterPart, build_parts
from peft_hybrid.modeling.parts import expected_shapes as parts_shapes
from peft_hybrid.modeling.peft_folders import peft_lora_as_hybrid
from peft_hybrid.modeling.prompt import SoftPrompt
from peft_hybrid.modeling.quantization import check_mode, fp32_master_weights, record_quantization
from peft_hybrid.serialization import (
    WEIGHTS_NAME,
    AdapterLoadError,
    check_tensors,
)
from peft_hybrid.serialization import load_adapter as read_adapter_folder

_NAME = re.compile(r"[A-Za-z0-9_-]+")
# A name is a subfolder of a saved folder: short enough for every file system (255 bytes a
# component) with room for the staging and temporary names a save adds around it.
MAX_NAME_LENGTH = 96


SUPPORTED_MODEL_TYPES = ("t5", "mt5", "umt5")


@dataclasses.dataclass
class _Adapter:
    config: HybridConfig
    parts: list[AdapterPart]
    owns_base: bool  # mode full: the base weights are this adapter's, saved with it

    @property
    def prompt(self) -> SoftPrompt | None:
        return next((p.row_prompt() for p in self.parts if p.row_prompt() is not None), None)

    @property
    def lora(self) -> AdapterPart | None:
        return next((p for p in self.parts if p.in_lora_layers), None)

    @property
    def uses_dropout(self) -> bool:
        return any(p.drops_in_training for p in self.parts)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {key: tensor for part in self.parts for key, tensor in part.tensors().items()}


class AdapterRegistry:
    """Mixin of `HybridModel`: the adapter table and the calls that change it."""

    base_model: nn.Module
    prompts: nn.ModuleDict
    _adapters: dict[str, _Adapter]
    _active: str

    # --- reading ---------------------------------------------------------------------------
    @property
    def active_adapter(self) -> str:
        """Name of the adapter that training, saving and unnamed calls use."""
        return self._active

    @property
    def adapters(self) -> dict[str, HybridConfig]:
        """Every loaded adapter's config, by name, in the order they were added."""
        return {name: adapter.config for name, adapter in self._adapters.items()}

    # --- changing --------------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, config: HybridConfig, *, tokenizer=None) -> None:
        """Add a fresh adapter (LoRA B at zero, prompt initialised by ``config.prompt_init``).

        It does not become active: call ``set_adapter(adapter_name)`` to train or use it alone.

        Example:
            >>> from peft_hybrid import HybridConfig, HybridModel
            >>> from peft_hybrid.offline import t5_from_preset
            >>> model = HybridModel(t5_from_preset("tiny")[0], HybridConfig(mode="lora"))
            >>> model.add_adapter("qa", HybridConfig(mode="prompt", num_virtual_tokens=8))
            >>> sorted(model.adapters), model.active_adapter
            (['default', 'qa'], 'default')
        """
        self._check_new(adapter_name, config)
        check_mode(self.base_model, config.mode, f"adapter {adapter_name!r}")
        fresh = config.base_model_shape is None  # a loaded adapter has the shape of the base it was made on
        config = dataclasses.replace(config)  # the model fills in the base's shape and name
        config.base_model_shape = self._check_shape(config, f"adapter {adapter_name!r}")
        record_base(config, self.base_model)
        record_quantization(config, self.base_model, fresh=fresh, source=f"adapter {adapter_name!r}")
        # PEFT's injection sets requires_grad in the layers it touches for the adapters they apply
        applied = {name for layer in lora_layers(self.base_model).values() for name in layer.active_adapters}
        parts = build_parts(self, config, adapter_name, tokenizer)
        self._adapters[adapter_name] = _Adapter(config, parts, owns_base=config.trains_base)
        if getattr(self, "quantization", None) is not None:
            fp32_master_weights(self._adapters[adapter_name].tensors().values())
        # Only the active adapter trains; the first one becomes active as the model is built. Later
        # ones touch only what the injection may have changed: freezing every adapter again would
        # make each load cost as much as all the loads before it.
        if self._active not in self._adapters or self._active == adapter_name:
            self._freeze(adapter_name)
        else:
            self._freeze(self._active, only={adapter_name, self._active, *applied})

    def load_adapter(
        self,
        path_or_repo_id: str | Path,
        adapter_name: str,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        subfolder: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        """Load a saved adapter (a folder, a Hub repo id, or a vanilla PEFT LoRA folder) as ``adapter_name``.

        ``subfolder`` picks one adapter of a folder or repo holding several (as ``save_pretrained``
        with ``adapter_names`` writes them). Only the adapter's own tensors are allocated; the
        active adapter does not change.

        Example:
            >>> model.load_adapter("me/flan-t5-samsum-hybrid", "samsum")  # doctest: +SKIP
            >>> model.load_adapter("me/flan-t5-tasks", "sst2", subfolder="sst2")  # doctest: +SKIP
        """
        from peft_hybrid.hub.download import resolve_folder

        self._check_new(adapter_name, None)
        folder = resolve_folder(
            path_or_repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            subfolder=subfolder,
        )
        config, tensors, source = read_any_adapter(folder, self.base_model, allow_nonfinite=allow_nonfinite)
        self._check_fits(config, tensors, source)
        self.add_adapter(adapter_name, config)
        self._load_tensors(adapter_name, tensors, source)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter: the one used, trained and saved by default."""
        self._check_known(adapter_name)
        self._active = adapter_name
        self._freeze(adapter_name)
        self._activate_layers(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter and free its tensors; the base is left exactly as it was."""
        self._check_known(adapter_name)
        if adapter_name == self._active:
            raise ValueError(
                f"Adapter {adapter_name!r} is the active adapter; set_adapter() to another one before deleting it."
            )
        for part in self._adapters.pop(adapter_name).parts:
            part.remove()

    # --- helpers for HybridModel -----------------------------------------------------------
    def _check_new(self, adapter_name: str, config: HybridConfig | None) -> None:
        if self.merged:
            raise ValueError(
                f"Cannot add adapter {adapter_name!r}: adapter {self._active!r} was merged into the base weights "
                "(merge_and_unload), so a new adapter would run on a changed base. Add it to an unmerged model."
            )
        check_adapter_name(adapter_name)
        if adapter_name in self._adapters:
            raise ValueError(
                f"An adapter named {adapter_name!r} is already loaded; delete_adapter() it or pick another name."
            )
        owns_base = [name for name, a in self._adapters.items() if a.owns_base]
        if owns_base or (config is not None and config.trains_base and self._adapters):
            raise ValueError(
                f"Cannot add adapter {adapter_name!r}: mode 'full' trains the base itself, so a model holding a "
                "'full' adapter holds no other. Build a separate HybridModel for it."
            )

    def _check_known(self, adapter_name: str) -> None:
        if adapter_name not in self._adapters:
            raise ValueError(f"No adapter named {adapter_name!r}; loaded adapters are {sorted(self._adapters)}.")

    def _check_shape(self, config: HybridConfig, source: str) -> dict[str, int]:
        return check_shape(self.base_model, config, source)

    def _check_fits(self, config: HybridConfig, tensors: dict[str, torch.Tensor], source: str) -> None:
        check_fits(self.base_model, config, tensors, source)

    def _load_tensors(self, adapter_name: str, tensors: dict[str, torch.Tensor], source: str) -> None:
        own = self._adapters[adapter_name].tensors()
        check_tensors(tensors, {k: tuple(v.shape) for k, v in own.items()}, source)
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(tensors[key].to(param.dtype))

    def _freeze(self, active: str, only: set[str] | None = None) -> None:
        """Only the active adapter's tensors train (and the base, for mode ``full``).

        ``only``: set just these adapters' tensors (the base and the others are as they should be).
        """
        if only is None:
            self.base_model.requires_grad_(self._adapters[active].owns_base)
        for name in self._adapters if only is None else [n for n in only if n in self._adapters]:
            for tensor in self._adapters[name].tensors().values():
                tensor.requires_grad_(name == active)

    def _activate_layers(self, adapter_name: str | None) -> None:
        for layer in lora_layers(self.base_model).values():
            set_active(layer, [adapter_name] if adapter_name in layer.lora_A else [])

    @contextlib.contextmanager
    def _using(self, adapter_name: str) -> Iterator[SoftPrompt | None]:
        """Run one adapter (or ``__base__``) for a call, then put the active one back; yields its prompt."""
        adapter = self._adapters.get(adapter_name)
        self._activate_layers(adapter_name if adapter is not None else None)
        try:
            yield adapter.prompt if adapter is not None else None
        finally:
            self._activate_layers(self._active)


def check_adapter_name(adapter_name: Any) -> None:
    """Refuse a name that cannot be a subfolder on every file system, or that means the bare base."""
    valid = isinstance(adapter_name, str) and _NAME.fullmatch(adapter_name) and adapter_name != BASE_ADAPTER
    if not valid or len(adapter_name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"adapter_name={adapter_name!r}: use 1 to {MAX_NAME_LENGTH} letters, digits, '_' and '-' (it names a "
            f"subfolder), and not {BASE_ADAPTER!r}, which means the bare base."
        )


def check_shape(base_model: nn.Module, config: HybridConfig, source: str) -> dict[str, int]:
    """The one base-shape check: an adapter made for another base is refused, naming both shapes."""
    shape = base_shape(base_model)
    if config.base_model_shape is not None and config.base_model_shape != shape:
        raise AdapterLoadError(
            f"{source} was made for a base of shape {config.base_model_shape}, but this base model has shape "
            f"{shape}. Load it onto {config.base_model_name_or_path or 'the base it was trained on'}."
        )
    return shape


def check_fits(base_model: nn.Module, config: HybridConfig, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Check an adapter against a base before anything is injected into it."""
    check_shape(base_model, config, source)
    check_tensors(tensors, expected_shapes(base_model, config), source)


def expected_shapes(base_model: nn.Module, config: HybridConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor an adapter with ``config`` holds for ``base_model``, keyed as saved."""
    return parts_shapes(base_model, config)


def read_any_adapter(
    folder: Path, base_model: nn.Module, *, allow_nonfinite: bool = False
) -> tuple[HybridConfig, dict[str, torch.Tensor], str]:
    """A peft_hybrid adapter folder, or a vanilla PEFT LoRA one read as a mode ``lora`` adapter."""
    if (folder / CONFIG_NAME).is_file() or not (folder / PEFT_CONFIG_NAME).is_file():
        config, tensors = read_adapter_folder(folder, allow_nonfinite=allow_nonfinite)
        return config, tensors, str(folder / WEIGHTS_NAME)
    return peft_lora_as_hybrid(folder, base_model, allow_nonfinite=allow_nonfinite)


def base_shape(model: nn.Module) -> dict[str, int]:
    c = model.config
    return {
        "d_model": c.d_model,
        "num_layers": c.num_layers,
        "num_decoder_layers": c.num_decoder_layers,
        "num_heads": c.num_heads,
        "vocab_size": c.vocab_size,
    }


def check_supported(model: nn.Module) -> None:
    """Refuse a base that is not a T5-family seq2seq model with ``generate``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES or not hasattr(model, "generate"):
        raise TypeError(
            f"HybridModel wraps T5-family *ForConditionalGeneration models ({', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"got {type(model).__name__} (model_type={model_type!r})."
        )
