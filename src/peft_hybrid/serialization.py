"""The adapter folder format: file names, atomic writes, and validated reads.

A saved adapter is two files beside a model card:

- ``hybrid_config.json``: the :class:`HybridConfig`, library/format version and the SHA-256 of
  the weights file it was written with;
- ``adapter_model.safetensors``: LoRA tensors under PEFT's key names plus ``prompt_embeddings``.

Each file is written to a temporary name and renamed into place, and the config goes last, so a
crash mid-save never leaves a folder that loads as if it were whole: either the config is absent,
or its recorded hash no longer matches the weights and loading says so. Files get the permissions
the umask gives, like any other file the user writes. `staged_save` extends the promise to a
whole save of several files (adapter, tokenizer, summaries): they are written into a hidden
folder first and moved in only once all of them are whole, the config last.

Loading refuses what would load but could not be used: non-finite tensors (``allow_nonfinite``
opts out, for debugging), a path that is a file or a symbolic link loop.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from peft_hybrid.config import CONFIG_NAME, HybridConfig, config_path, read_config_dict

WEIGHTS_NAME = "adapter_model.safetensors"


class AdapterLoadError(ValueError):
    """A saved adapter is missing, damaged, or does not fit the model it is loaded into."""


class SaveError(OSError):
    """A save failed (disk full, read-only, no permission); the message names the path and the cause."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


# errno -> what to tell the user; anything else is described by its strerror.
_SAVE_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no write permission",
    errno.EPERM: "no write permission",
}


# The errors a save meets at the edge of the disk (and reports in one line).
DISK_ERRORS = frozenset(_SAVE_CAUSES)


def save_failure(path: str | Path, err: OSError) -> SaveError:
    """A one-line `SaveError` for ``err`` raised while saving ``path``.

    Example:
        >>> str(save_failure("runs/x", OSError(errno.ENOSPC, "No space left on device")))  # doctest: +ELLIPSIS
        'cannot save runs/x: the disk is full (No space left on device). Free space or pick another folder; ...'
    """
    code = err.errno
    cause = _SAVE_CAUSES.get(code) or err.strerror or str(err)
    detail = f" ({os.strerror(code)})" if code in _SAVE_CAUSES else ""
    return SaveError(
        f"cannot save {path}: {cause}{detail}. Free space or pick another folder; what was saved there before is "
        "unchanged or refused whole when loaded.",
        code,
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The file gets the permissions the umask gives (0644 under the usual 022), not a private 0600.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        if err.errno in DISK_ERRORS:
            raise save_failure(path, err) from None
        raise
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, SaveError) and err.errno in DISK_ERRORS:
            raise save_failure(path, err) from None
        raise


@contextlib.contextmanager
def staged_save(directory: str | Path) -> Iterator[Path]:
    """Write a save of several files into a hidden folder, then move them into ``directory`` together.

    Every file is complete before any reaches ``directory``; moving needs no space, and the
    configs (``hybrid_config.json``, at any depth) move last, so a failure leaves the folder as it
    was, or (a move interrupted) with weights its config's hash refuses. A failure raises a
    one-line `SaveError` naming ``directory`` and the cause.

    Example:
        >>> with staged_save("runs/x") as staging:  # doctest: +SKIP
        ...     model.save_pretrained(staging)
        ...     tokenizer.save_pretrained(staging)
    """
    try:
        directory = prepare_output_dir(directory)
    except PermissionError:
        raise save_failure(directory, PermissionError(errno.EACCES, os.strerror(errno.EACCES))) from None
    staging = directory / f".saving-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
        yield staging
        files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == CONFIG_NAME)
        for file in files:
            target = directory / file.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    except OSError as err:
        raise save_failure(directory, err) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def adapter_path_problem(path: str | Path) -> str | None:
    """Why an existing local ``path`` cannot be an adapter folder, or ``None`` (a folder, or nothing there).

    Example:
        >>> adapter_path_problem("/") is None
        True
    """
    path = Path(path)
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop (a link that leads back to itself); point it at the adapter."
        if path.is_symlink():
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist."
        return None
    if not path.is_dir():
        return (
            f"{path} is a file, not an adapter folder: pass the folder that holds {CONFIG_NAME} "
            "(the output_dir of a training run, or a folder written by save_pretrained)."
        )
    return None


# The index a multi-adapter save writes at its root, and what a save writes into each folder.
INDEX_NAME = "hybrid_adapters.json"
# What a save writes into an adapter's folder (mode ``full`` adds the base's own files).
WRITTEN_FILES = (
    CONFIG_NAME,
    WEIGHTS_NAME,
    "README.md",
    "training_curve.png",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
)


def written_by_save(name: str) -> bool:
    """Whether a file of this name in an adapter's folder is one a save writes."""
    return name in WRITTEN_FILES or (name.startswith("model-") and name.endswith(".safetensors"))


def read_index(directory: Path) -> list[str]:
    """The subfolders the last multi-adapter save into ``directory`` recorded (none: ``[]``)."""
    path = directory / INDEX_NAME
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        subfolders = data["subfolders"]
    except (ValueError, KeyError, TypeError):
        raise AdapterLoadError(
            f"{path} is damaged: it should list the adapter subfolders a save wrote. Delete it (the adapters "
            "themselves are unaffected) and save again."
        ) from None
    if data.get("library") != "peft_hybrid":
        return []  # not an index this library wrote: it records nothing to clean up
    if not isinstance(subfolders, list) or not all(isinstance(s, str) and "/" not in s for s in subfolders):
        raise AdapterLoadError(f"{path}: 'subfolders' must be a list of folder names.")
    return subfolders


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


def load_adapter(
    directory: str | Path, *, allow_nonfinite: bool = False
) -> tuple[HybridConfig, dict[str, torch.Tensor]]:
    """Read and check an adapter folder: config, hash, the safetensors file, finite values.

    ``allow_nonfinite=True`` loads tensors holding NaN or infinity (to inspect a diverged run);
    by default they are refused, since such an adapter generates nothing useful.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterLoadError(
            adapter_path_problem(directory)
            or f"{directory} is not a folder. Pass a folder saved by HybridModel.save_pretrained or a Hub repo id."
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
    tensors = _parse_safetensors(blob, weights)
    if not allow_nonfinite:
        check_finite(tensors, weights)
    return config, tensors


def load_adapter_tensors_file(path: Path, *, allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """Read a safetensors file with an error that names it (non-finite values refused, see `load_adapter`)."""
    if not path.is_file():
        raise AdapterLoadError(f"{path} is missing. Save or download the adapter again.")
    tensors = _parse_safetensors(path.read_bytes(), path)
    if not allow_nonfinite:
        check_finite(tensors, path)
    return tensors


def check_finite(tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse tensors holding NaN or infinity, naming the first few and how many values."""
    bad = []
    for key in sorted(tensors):
        tensor = tensors[key]
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            values = tensor.float()
            bad.append(f"{key} ({int(values.isnan().sum())} NaN, {int(values.isinf().sum())} infinite)")
    if bad:
        raise AdapterLoadError(
            f"{source} holds non-finite values in {len(bad)} tensor(s): {'; '.join(bad[:5])}. The run that saved "
            "it diverged or the file was altered; retrain (e.g. with a lower learning rate) or load an earlier "
            "checkpoint. To inspect it anyway, pass allow_nonfinite=True."
        )


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
