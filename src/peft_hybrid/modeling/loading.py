"""The one base-model resolver: a local folder, a Hub id, or an offline preset (``preset:NAME``).

`load_base` (model and tokenizer) and `load_base_model` (model only) are what
`HybridModel.from_pretrained`, the recipes, inference, the demo and the CLI load bases with: only
safetensors weights are read and remote code never runs. Hub ids are checked with
`peft_hybrid.hub.access.require_hub` first, so an offline machine fails at once with advice.

The resolver also remembers where each base came from, and `record_base` writes that into an
adapter's config (its provenance, one rule for every way a base is made):

* a Hub base is recorded by id, with the commit it resolved to as ``revision``, so a base later
  re-pushed under the same id does not silently change under the adapter (loading uses that commit);
* a folder base is recorded as the user gave it to the resolver (a relative path stays relative,
  not the absolute path transformers stores in ``config._name_or_path``), with no revision;
* a preset is recorded as ``preset:NAME`` (always rebuilt with seed `PRESET_SEED`).

An adapter put on a base of another Hub commit than the one it was trained on gets a
`BaseRevisionWarning` (the shapes may match while the weights differ); it is a warning, not a
refusal, because loading an adapter onto an updated base is sometimes what the user wants.

Example:
    >>> from peft_hybrid.modeling.loading import base_source, load_base
    >>> base, tokenizer = load_base("preset:tiny")
    >>> base_source(base)
    BaseSource(name='preset:tiny', revision=None)
"""

from __future__ import annotations

import re
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from torch import nn

from peft_hybrid.config import HybridConfig
from peft_hybrid.hub.access import hub_offline, require_hub
from peft_hybrid.hub.download import load_error
from peft_hybrid.offline.presets import PRESET_PREFIX, preset_id, t5_from_preset

# The preset base is random: the same seed everywhere makes "preset:tiny" name one model.
PRESET_SEED = 0
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Base model -> where the resolver loaded it from (weak: a base that is dropped is forgotten).
_SOURCES: weakref.WeakKeyDictionary[nn.Module, BaseSource] = weakref.WeakKeyDictionary()


class BaseRevisionWarning(UserWarning):
    """An adapter was put on a base of another Hub commit than the one it was trained on."""


@dataclass(frozen=True)
class BaseSource:
    """Where a base model came from, as an adapter config records it."""

    name: str | None
    revision: str | None = None  # the Hub commit; None for folders and presets


def preset_of(name_or_path: str | None) -> str | None:
    """The preset named by ``preset:NAME``, or ``None`` for anything else.

    Example:
        >>> preset_of("preset:tiny"), preset_of("google/flan-t5-base")
        ('tiny', None)
    """
    if name_or_path and str(name_or_path).startswith(PRESET_PREFIX):
        return str(name_or_path)[len(PRESET_PREFIX) :]
    return None


def load_base(
    name_or_path: str | Path | None = None,
    *,
    revision: str | None = None,
    preset: str | None = None,
    token: str | bool | None = None,
    quantization_config: Any = None,
) -> tuple[nn.Module, Any]:
    """``(base_model, tokenizer)`` from a preset name, a ``preset:NAME`` string, a folder or a Hub id.

    ``preset`` (a bare name such as ``tiny``) wins over ``name_or_path``. A folder's own
    tokenizer is loaded with it; a Hub id's at the same ``revision``. ``quantization_config``
    (a ``BitsAndBytesConfig``) quantizes the model as it loads (`peft_hybrid.modeling.quantization`).
    """
    if preset is not None:
        name_or_path = preset_id(preset)
    if preset_of(name_or_path) is not None:
        return _build_preset(preset_of(name_or_path), quantization_config)
    model = load_base_model(name_or_path, revision=revision, token=token, quantization_config=quantization_config)
    from transformers import AutoTokenizer

    # The commit the model was loaded at, so a branch moving in between cannot mix two revisions.
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), revision=_SOURCES[model].revision, token=token)
    return model, tokenizer


def load_base_model(
    name_or_path: str | Path | None,
    revision: str | None = None,
    token: str | bool | None = None,
    quantization_config: Any = None,
) -> nn.Module:
    """Load a T5-family base from ``preset:NAME``, a folder or a Hub id: safetensors only, never remote code.

    ``quantization_config``: a ``BitsAndBytesConfig`` to quantize it with as it loads.
    """
    if not name_or_path:
        raise ValueError(
            "No base model: pass a Hub id or folder (--model_name_or_path / --base / base_model=...) "
            "or --model_preset tiny."
        )
    name = str(name_or_path)
    if preset_of(name) is not None:
        return _build_preset(preset_of(name), quantization_config)[0]
    from transformers import AutoModelForSeq2SeqLM

    quantized = {} if quantization_config is None else {"quantization_config": quantization_config}
    if Path(name).is_dir():
        model = AutoModelForSeq2SeqLM.from_pretrained(name, use_safetensors=True, **quantized)
        _SOURCES[model] = BaseSource(name)
        return model
    require_hub(f"base model {name!r}", name, revision=revision)
    commit = _resolve_commit(name, revision, token)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        name, revision=commit, token=token, use_safetensors=True, **quantized
    )
    _SOURCES[model] = BaseSource(name, commit)
    return model


def base_for_adapter(
    folder: Path, config: HybridConfig, base_model: nn.Module | None, *, token: Any, quantization_config: Any
) -> nn.Module:
    """The base an adapter loads onto: the one given, else the one its config names (quantized if asked).

    A fully fine-tuned folder is its own base (mode ``full``): it takes neither a base nor a quantization.
    """
    if config.trains_base:
        if base_model is not None or quantization_config is not None:
            what = "base_model" if base_model is not None else "quantization_config"
            raise ValueError(f"{folder} holds a fully fine-tuned model, not an adapter; load it without {what}.")
        return load_base_model(str(folder))
    if base_model is None:
        return load_base_model(
            config.base_model_name_or_path,
            revision=config.revision,
            token=token,
            quantization_config=quantization_config,
        )
    if quantization_config is not None:
        raise ValueError(
            "quantization_config quantizes the base that from_pretrained loads; a base_model given is used as it "
            "is. Load that base with quantization_config, or pass base_model=None."
        )
    return base_model


def base_source(base_model: nn.Module) -> BaseSource:
    """Where ``base_model`` came from: what the resolver was given, else what its config says.

    A base built some other way (``AutoModelForSeq2SeqLM.from_pretrained`` directly) is recorded by
    its ``config._name_or_path`` (transformers 5 keeps no commit on the model, so without one).
    """
    if base_model in _SOURCES:
        return _SOURCES[base_model]
    config = getattr(base_model, "config", None)
    name = getattr(config, "_name_or_path", None) or None
    return BaseSource(name)


def record_base(config: HybridConfig, base_model: nn.Module) -> None:
    """Write ``base_model``'s provenance into ``config``, or warn when it is another Hub commit.

    A config that names no base gets the base's name and revision (`base_source`). A config that
    names this base without a revision gets its commit. A config pinned to a commit that differs
    from the base's commit gets a `BaseRevisionWarning` (the config keeps the commit it was trained on).
    """
    source = base_source(base_model)
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path, config.revision = source.name, source.revision
    elif config.revision is None and config.base_model_name_or_path == source.name:
        config.revision = source.revision
    elif _is_commit(config.revision) and _is_commit(source.revision) and config.revision != source.revision:
        warnings.warn(
            f"This adapter was trained on {config.base_model_name_or_path!r} at commit {config.revision}, but the "
            f"base model given is {source.name!r} at commit {source.revision}: same shapes, possibly other weights, "
            "so outputs may differ from the adapter's reported results. Load it with base_model=None to get the "
            "base at the commit it was trained on.",
            BaseRevisionWarning,
            stacklevel=3,
        )


def _resolve_commit(repo_id: str, revision: str | None, token: str | bool | None) -> str:
    """The commit ``revision`` (default: the main branch) of ``repo_id`` points to; offline, the cache's record."""
    try:
        resolved = HfApi(token=token).resolve_revision(repo_id, revision=revision, local_files_only=hub_offline())
    except (LocalEntryNotFoundError, HfHubHTTPError) as err:
        raise load_error(err, repo_id, token, local_files_only=hub_offline()) from None
    return resolved.resolved


def _build_preset(preset: str, quantization_config: Any = None) -> tuple[nn.Module, Any]:
    model, tokenizer = t5_from_preset(preset, seed=PRESET_SEED)
    if quantization_config is not None:
        # bitsandbytes quantizes Linears as transformers loads their weights: load the preset back from disk.
        import tempfile

        from transformers import AutoModelForSeq2SeqLM

        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            model = AutoModelForSeq2SeqLM.from_pretrained(folder, quantization_config=quantization_config)
    _SOURCES[model] = BaseSource(preset_id(preset))
    return model, tokenizer


def _is_commit(revision: str | None) -> bool:
    return bool(revision) and _COMMIT_RE.match(revision) is not None
