"""Which checkpoint a run resumes from: the latest COMPLETE one.

transformers writes ``checkpoint-<step>`` in place, one file after another (adapter, tokenizer,
optimizer, scheduler, RNG states, and ``trainer_state.json`` last), and its
``get_last_checkpoint`` returns the highest step number whether or not that folder is whole. A
run killed while a checkpoint was being written leaves such a folder behind, and resuming from it
would fail deep in the Trainer or, worse, continue from a mix of two steps.

A checkpoint counts as complete when its adapter loads (``hybrid_config.json`` present and the
weights matching the hash recorded in it) and ``trainer_state.json`` (the last file written)
parses with a step count (and the optimizer, scheduler and RNG archives are whole).
`latest_complete_checkpoint` skips incomplete folders with a logged
notice; they are left on disk, and the resumed run overwrites them when it reaches their step.

Example:
    >>> from pathlib import Path
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.offline import t5_from_preset
    >>> from peft_hybrid.training.checkpoints import latest_complete_checkpoint
    >>> base, tokenizer = t5_from_preset("tiny")
    >>> _ = HybridModel(base, HybridConfig()).save_pretrained("runs/samsum/checkpoint-40")
    >>> _ = Path("runs/samsum/checkpoint-40/trainer_state.json").write_text('{"global_step": 40}')
    >>> Path("runs/samsum/checkpoint-50").mkdir()  # a save killed before its first file
    >>> latest_complete_checkpoint("runs/samsum")
    PosixPath('runs/samsum/checkpoint-40')

``HybridTrainer.train(resume_from_checkpoint=True)`` resumes from that folder.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.serialization import AdapterLoadError, load_adapter

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# What ``--resume_from_checkpoint`` (a string on the command line) may say for "the latest one".
_LATEST_WORDS = {"true", "latest"}


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or ``None`` when it is a complete checkpoint.

    Example:
        >>> import os
        >>> os.makedirs("runs/samsum/checkpoint-40")
        >>> checkpoint_problem("runs/samsum/checkpoint-40")
        'runs/samsum/checkpoint-40 holds no hybrid_config.json (the save stopped before the adapter was complete)'
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not (folder / CONFIG_NAME).is_file():
        return f"{folder} holds no {CONFIG_NAME} (the save stopped before the adapter was complete)"
    try:
        load_adapter(folder)
    except (AdapterLoadError, ValueError) as err:
        return str(err)
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"{folder} holds no {TRAINER_STATE_NAME} (the save stopped before the trainer state was written)"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{state} is not valid JSON ({err}; the save was interrupted while writing it)"
    if not isinstance(data, dict) or not isinstance(data.get("global_step"), int):
        return f"{state} holds no global_step; it is not a trainer state"
    # Written before the trainer state, so only damage after the save truncates them; torch.save
    # writes zip archives, whose directory sits at the end: a cut file is no longer a zip.
    for part in sorted(folder.glob("*.pt")) + sorted(folder.glob("rng_state*.pth")):
        if not zipfile.is_zipfile(part):
            return f"{part} is damaged (not a whole torch archive)"
    return None


def _checkpoints_newest_first(output_dir: Path) -> list[Path]:
    found = []
    for child in output_dir.iterdir() if output_dir.is_dir() else []:
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found, reverse=True)]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-step complete ``checkpoint-<step>`` folder in ``output_dir``, or ``None``.

    Incomplete folders newer than it are skipped with a logged warning naming what is missing.
    """
    for folder in _checkpoints_newest_first(Path(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning(
            "Skipping %s: it is incomplete (%s). Resuming from an older checkpoint; training rewrites this "
            "folder when it reaches its step again.",
            folder.name,
            problem,
        )
    return None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | Path) -> str | None:
    """What ``Trainer.train(resume_from_checkpoint=value)`` should get: a complete folder or ``None``.

    ``True`` (or the strings ``"true"``/``"latest"``, as the command line passes them) means the
    latest complete checkpoint in ``output_dir``; a path must be a complete checkpoint. Raises
    ValueError (`AdapterLoadError` for a damaged folder) saying what is wrong and what to pass.

    Example:
        >>> resolve_resume_checkpoint(None, "runs/samsum") is None
        True
    """
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in _LATEST_WORDS and not Path(value).exists():
        value = True
    if value is True:
        latest = latest_complete_checkpoint(output_dir)
        if latest is None:
            found = [p.name for p in _checkpoints_newest_first(Path(output_dir))]
            detail = f"only incomplete ones ({', '.join(found)})" if found else "no checkpoint-<step> folders"
            raise ValueError(
                f"resume_from_checkpoint: output_dir {output_dir} holds {detail}; nothing to resume from. "
                "Start the run without resume_from_checkpoint."
            )
        logger.info("Resuming from %s, the latest complete checkpoint.", latest)
        return str(latest)
    problem = checkpoint_problem(value)
    if problem is not None:
        latest = latest_complete_checkpoint(Path(value).parent)
        hint = f" The latest complete checkpoint there is {latest}." if latest is not None else ""
        raise AdapterLoadError(
            f"resume_from_checkpoint={value}: cannot resume, {problem}.{hint} Pass a complete checkpoint folder, "
            "or resume_from_checkpoint=True (--resume_from_checkpoint latest) for the latest complete one."
        )
    return str(value)
