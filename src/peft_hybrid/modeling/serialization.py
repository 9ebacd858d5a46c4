"""The adapter folder format: file names, atomic writes, and validated reads.

A saved adapter is two files beside a model card:

- ``hybrid_config.json``: the :class:`HybridConfig`, library/format version and the SHA-256 of
  the weights file it was written with;
- ``adapter_model.safetensors``: LoRA tensors under PEFT's key names plus ``prompt_embeddings``.

Each file is written to a temporary name and renamed into place, and the config goes last, so a
crash mid-save never leaves a folder that loads as if it were whole: either the config is absent,
or its recorded hash no longer matches the weights and loading says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from peft_hybrid.config import CONFIG_NAME, HybridConfig, config_path, read_config_dict

WEIGHTS_NAME = "adapter_model.safetensors"


class AdapterLoadError(ValueError):
    """A saved adapter is missing, damaged, or does not fit the model it is loaded into."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_output_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"Cannot save to {directory}: it is a file. Pick a folder path.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise PermissionError(
            f"Cannot create {directory}: no write permission. Pick a folder you can write to."
        ) from None
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"Cannot write into {directory}: no write permission. Pick a folder you can write to.")
    return directory


def save_adapter(directory: str | Path, config: HybridConfig, tensors: dict[str, torch.Tensor]) -> Path:
    """Write weights then config (with the weights' hash) atomically into ``directory``."""
    directory = prepare_output_dir(directory)
    blob = _safetensors_bytes(tensors, {"library": "peft_hybrid", "mode": config.mode})
    atomic_write_bytes(directory / WEIGHTS_NAME, blob)
    data = config.to_dict()
    data["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return directory


def load_adapter(directory: str | Path) -> tuple[HybridConfig, dict[str, torch.Tensor]]:
    """Read and check an adapter folder: config, hash, and the safetensors file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterLoadError(
            f"{directory} is not a folder. Pass a folder saved by HybridModel.save_pretrained or a Hub repo id."
        )
    try:
        raw = read_config_dict(directory)
        config = HybridConfig.from_dict(raw, source=str(config_path(directory)))
    except FileNotFoundError as err:
        raise AdapterLoadError(str(err)) from None
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        if not config.has_adapter_tensors:
            return config, {}
        raise AdapterLoadError(f"{weights} is missing; the adapter folder is incomplete. Save or download it again.")
    blob = weights.read_bytes()
    expected = raw.get("weights_sha256")
    if expected is not None and hashlib.sha256(blob).hexdigest() != expected:
        raise AdapterLoadError(
            f"{weights} does not match the hash recorded in {CONFIG_NAME}: the save was interrupted or the file "
            "was changed. Save or download the adapter again."
        )
    return config, _parse_safetensors(blob, weights)


def load_adapter_tensors_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file with an error that names it."""
    if not path.is_file():
        raise AdapterLoadError(f"{path} is missing. Save or download the adapter again.")
    return _parse_safetensors(path.read_bytes(), path)


def _parse_safetensors(blob: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors_bytes(blob)
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(
            f"{path} is not a readable safetensors file ({err}). Save or download it again."
        ) from None


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Refuse missing/unexpected keys, wrong shapes or non-float dtypes, naming each."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all)"
        )
    for key in sorted(set(expected) & set(tensors)):
        tensor = tensors[key]
        if tuple(tensor.shape) != tuple(expected[key]):
            problems.append(
                f"{key} has shape {tuple(tensor.shape)} in the adapter but the base model needs {tuple(expected[key])}"
            )
        elif not tensor.dtype.is_floating_point:
            problems.append(f"{key} has dtype {tensor.dtype}; adapter tensors must be floating point")
    if problems:
        raise AdapterLoadError(
            f"{source} does not fit this base model: "
            + "; ".join(problems[:6])
            + ". Is it an adapter for another base model?"
        )


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return save_safetensors_bytes(cpu, metadata={"format": "pt", **metadata})


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Atomically write ``tensors`` as a plain safetensors file."""
    atomic_write_bytes(path, _safetensors_bytes(tensors, {}))


def load_full_base_weights(base_model: torch.nn.Module, folder: Path) -> None:
    """Load a mode-``full`` checkpoint's base weights (safetensors, possibly sharded) in place."""
    from safetensors.torch import load_file
    from transformers.trainer_utils import load_sharded_checkpoint

    single = folder / "model.safetensors"
    if (folder / "model.safetensors.index.json").is_file():
        load_sharded_checkpoint(base_model, str(folder), strict=False, prefer_safe=True)
        return
    if not single.is_file():
        raise AdapterLoadError(f"{single} is missing: a mode 'full' checkpoint holds the base weights there.")
    state_dict = load_file(str(single), device="cpu")
    result = base_model.load_state_dict(state_dict, strict=False)
    # save_pretrained drops tied copies (lm_head = shared embedding); anything else missing is an error.
    tied = set(getattr(base_model, "_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise AdapterLoadError(
            f"{single} does not match the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}."
        )
