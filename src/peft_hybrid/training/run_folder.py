"""A run folder belongs to one run: a manifest says whose it is, a lock says who is writing it.

Training into an ``output_dir`` replaces its adapter, and checkpoint rotation deletes its
``checkpoint-<step>`` folders, so a folder that holds another run is refused, as is a second
process writing the same folder at once:

- `claim_run_folder` (what ``peft-hybrid train`` and ``recipes/*.py`` run under) takes an
  exclusive ``fcntl.flock`` on ``output_dir/.peft_hybrid.lock`` for the whole run (a second
  process gets `RunFolderBusy` naming the holder's PID), refuses a non-empty folder whose
  ``run_manifest.json`` is not this run's (or that has none) unless ``overwrite=True``, and
  writes this run's manifest;
- `check_resume_checkpoint` refuses a checkpoint saved by another run, naming the first
  difference.

A manifest is the run's identity: task, base model, adapter config (the `HybridConfig` fields that
shape the adapter, seed included) and a fingerprint of the data (SHA-256 of each local file, or the
Hub dataset id and revision). Training hyperparameters are not part of it: resuming with more
epochs, or another learning rate, is the same run.

Example:
    >>> from peft_hybrid import HybridConfig
    >>> from peft_hybrid.training.run_folder import claim_run_folder, run_manifest
    >>> manifest = run_manifest(HybridConfig(task="sst2"), {"train": {"dataset": "nyu-mll/glue"}})
    >>> with claim_run_folder("runs/sst2", manifest):  # doctest: +SKIP
    ...     trainer.train()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from peft_hybrid.config import CONFIG_NAME, HybridConfig, read_config_dict
from peft_hybrid.modeling.quantization import method_of
from peft_hybrid.modeling.serialization import atomic_write_bytes, prepare_output_dir

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks
    fcntl = None

logger = logging.getLogger(__name__)

MANIFEST_NAME = "run_manifest.json"
LOCK_NAME = ".peft_hybrid.lock"
MANIFEST_FORMAT = 1
# Where the run came from rather than what the adapter is: compared under "task" and "base".
# Not the adapter's identity: provenance (compared as task and base), and how it is run for inference.
_PROVENANCE_FIELDS = (
    "task",
    "base_model_name_or_path",
    "revision",
    "base_model_shape",
    "base_quantization",
    "inference",
)
# Files that say nothing about a run's results: a folder holding only these counts as empty.
_BOOKKEEPING = {MANIFEST_NAME, LOCK_NAME}


class RunFolderError(ValueError):
    """The run folder or checkpoint belongs to another run; the message names the difference."""


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's lock; ``pid`` is its process id (``None`` if unknown)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def require_writable_dir(directory: str | Path, argument: str) -> Path:
    """Create ``directory`` if needed and check it is a writable folder; ValueError names ``argument``.

    Example:
        >>> require_writable_dir("/proc/no-such-place", "--out")  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: --out: cannot create /proc/no-such-place (No such file or directory). ...
    """
    try:
        return prepare_output_dir(directory)
    except (NotADirectoryError, PermissionError) as err:
        raise ValueError(f"{argument}: {err}") from None
    except OSError as err:  # e.g. a read-only file system
        raise ValueError(
            f"{argument}: cannot create {directory} ({err.strerror}). Pick a folder you can write to."
        ) from None


# --- the manifest ---------------------------------------------------------------------------
def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"name", "bytes", "sha256"}`` of a data file: its content, not where it lies."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def run_identity(config: HybridConfig) -> dict[str, Any]:
    """Task, base and adapter of a `HybridConfig`: the part of a manifest a checkpoint's config also holds."""
    fields = config.to_dict()
    return {
        "task": fields.get("task"),
        "base": {
            "model": fields.get("base_model_name_or_path"),
            "revision": fields.get("revision"),
            "quantization": method_of(fields.get("base_quantization")),
        },
        "adapter": {
            name: fields[name] for name in sorted(HybridConfig.__dataclass_fields__) if name not in _PROVENANCE_FIELDS
        },
    }


def run_manifest(config: HybridConfig, data: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest of a run: `run_identity` of ``config`` plus ``data`` (see `file_fingerprint`)."""
    return {"format": MANIFEST_FORMAT, **run_identity(config), "data": json.loads(json.dumps(data, sort_keys=True))}


def recipe_manifest(script_args: Any, config: HybridConfig) -> dict[str, Any]:
    """The manifest of a recipe run: ``config`` plus the data its `ScriptArguments` name.

    Local files are fingerprinted by content; a Hub dataset by id and revision. The example cap
    and the input formatting (task tags, prefix) are part of the data: they change what is trained on.
    """
    from peft_hybrid.tasks._readers import require_regular_file

    if script_args.uses_local_data:
        files = {
            "train": script_args.train_file,
            "validation": script_args.validation_file,
            "test": script_args.test_file,
            "tables": script_args.tables_file,
        }
        data: dict[str, Any] = {k: file_fingerprint(require_regular_file(f)) for k, f in files.items() if f}
    else:
        data = {"dataset": script_args.dataset_id, "revision": script_args.dataset_revision}
    for name in ("max_train_samples", "max_eval_samples", "use_task_tags", "task_prefix"):
        data[name] = getattr(script_args, name)
    manifest = run_manifest(config, data)
    # The base as the user named it: a Hub base's commit is only known once it is loaded, and the
    # same arguments must name the same run before and after that.
    from peft_hybrid.offline.presets import preset_id

    base = preset_id(script_args.model_preset) if script_args.model_preset else script_args.model_name_or_path
    manifest["base"] = {
        "model": base,
        "revision": script_args.model_revision,
        "quantization": getattr(script_args, "quantize", None),
    }
    return manifest


def first_difference(ours: Any, theirs: Any, where: str = "") -> str | None:
    """The first place (dotted key) where two manifests differ, as ``"key: X here, Y there"``; ``None`` if equal."""
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        for key in list(ours) + [k for k in theirs if k not in ours]:
            if key == "format":
                continue
            found = first_difference(ours.get(key), theirs.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if ours != theirs:
        return f"{where or 'value'}: {ours!r} in this run, {theirs!r} there"
    return None


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest in ``folder``, or ``None`` when it has none (or one that does not parse)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# --- the folder ---------------------------------------------------------------------------
@contextlib.contextmanager
def claim_run_folder(
    output_dir: str | Path,
    manifest: Mapping[str, Any],
    *,
    overwrite: bool = False,
    resume_from_checkpoint: str | bool | None = None,
    enabled: bool = True,
) -> Iterator[Path | None]:
    """Hold ``output_dir`` for one run: lock it, check it is this run's own, write the manifest.

    Args:
        output_dir: the run folder (created if missing).
        manifest: this run's `run_manifest`.
        overwrite: train into a folder that holds another run (its files of the same names are
            replaced, the others stay); ``--overwrite_output_dir``.
        resume_from_checkpoint: what the run resumes from; a checkpoint of another run is refused
            (`check_resume_checkpoint`), ``overwrite`` or not.
        enabled: ``False`` on processes that do not write the folder (distributed ranks > 0).

    Raises:
        RunFolderBusy: another process holds the lock (the message names its PID).
        RunFolderError: the folder or checkpoint belongs to another run.
        ValueError: ``output_dir`` is a file or cannot be written.
    """
    if not enabled:
        yield None
        return
    directory = require_writable_dir(output_dir, "output_dir")
    lock = _lock(directory)
    try:
        if resume_from_checkpoint not in (None, False):
            from peft_hybrid.training.checkpoints import resolve_resume_checkpoint

            checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, directory)
            if checkpoint is not None:
                check_resume_checkpoint(checkpoint, manifest)
        if not overwrite:
            _check_is_own(directory, manifest)
        atomic_write_bytes(directory / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        yield directory
    finally:
        _unlock(lock)


def _check_is_own(directory: Path, manifest: Mapping[str, Any]) -> None:
    present = sorted(p.name for p in directory.iterdir() if p.name not in _BOOKKEEPING)
    if not present:
        return
    theirs = read_manifest(directory)
    if theirs is None and (directory / MANIFEST_NAME).exists():
        reason = (
            f"its run manifest {directory / MANIFEST_NAME} is damaged (not a JSON object), so it cannot be shown to "
            "be this run's own"
        )
    elif theirs is None:
        reason = "it is not empty and has no run manifest, so it is not this run's own"
    else:
        difference = first_difference(manifest, theirs)
        if difference is None:
            return
        reason = f"it holds another run ({difference})"
    shown = ", ".join(present[:6]) + (f", … ({len(present)} entries)" if len(present) > 6 else "")
    raise RunFolderError(
        f"output_dir {directory}: {reason}; it holds {shown}. Training would replace its adapter and delete its "
        "checkpoints: pick another --output_dir, or pass --overwrite_output_dir true to train into it anyway."
    )


def check_resume_checkpoint(checkpoint: str | Path, manifest: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose task, base, adapter config or data differ from ``manifest``'s.

    They come from the manifest of the run folder the checkpoint lies in; a checkpoint outside any
    run folder is compared by its own ``hybrid_config.json`` (task and adapter).
    """
    checkpoint = Path(checkpoint)
    folder_manifest = read_manifest(checkpoint) or read_manifest(checkpoint.parent)
    if folder_manifest is not None:  # written by the same rules as ``manifest``: compare like with like
        theirs: dict[str, Any] = {k: v for k, v in folder_manifest.items() if k != "format"}
    else:
        config = HybridConfig.from_dict(read_config_dict(checkpoint), source=str(checkpoint / CONFIG_NAME))
        theirs = dict(run_identity(config))
        theirs.pop("base")  # a loaded base is recorded with its commit, the arguments name it without
    ours = {key: value for key, value in manifest.items() if key in theirs}
    difference = first_difference(ours, theirs)
    if difference is not None:
        raise RunFolderError(
            f"resume_from_checkpoint={checkpoint}: it was saved by another run ({difference}). Resume with the "
            "task, base, adapter arguments and data that run used, or start without resume_from_checkpoint."
        )


def _lock(directory: Path) -> int | None:
    if fcntl is None:
        logger.warning("No file locks on this platform: nothing stops a second run from writing %s.", directory)
        return None
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # a folder, or a file we may not open, where the lock file belongs
        what = "a folder" if path.is_dir() else f"not a file this process can open ({err.strerror})"
        raise RunFolderError(
            f"output_dir {directory}: its lock file {path} is {what}. Remove it (training recreates it) or pick "
            "another --output_dir."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        os.close(fd)
        pid = int(holder) if holder.isdigit() else None
        raise RunFolderBusy(
            f"output_dir {directory} is in use by another training run (process {pid if pid else 'unknown'}, "
            f"lock {path}); wait for it to finish, or pick another --output_dir.",
            pid,
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    # The lock file stays: deleting it would let a third process lock a fresh inode while a second
    # still waits on the old one.
    if fd is not None:
        os.close(fd)
