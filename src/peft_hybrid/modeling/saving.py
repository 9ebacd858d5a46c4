"""Saving one or several named adapters of a `HybridModel` into a folder.

One adapter: today's folder (``hybrid_config.json``, ``adapter_model.safetensors``, ``README.md``).
Several: PEFT's layout, the first at the root and each other in a ``<name>/`` subfolder, each a
complete folder of its own; the root card gains a table of every adapter and the shared base, and
``hybrid_adapters.json`` records the subfolders this save wrote.

A save is checked whole before anything is written (a subfolder path that is a file, or a folder
this library did not write, is refused) and written through `staged_save`, so a failure leaves the
folder as it was. Saving again into the same folder makes it hold exactly the new save: subfolders
the previous save recorded in ``hybrid_adapters.json`` and this one does not write lose the files the
library wrote there (and go, when nothing else is left); nothing else is touched.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.modeling.serialization import (
    WEIGHTS_NAME,
    AdapterLoadError,
    atomic_write_bytes,
    save_adapter,
    staged_save,
)

if TYPE_CHECKING:
    from peft_hybrid.modeling.model import HybridModel

logger = logging.getLogger(__name__)

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


def adapter_names_to_save(model: HybridModel, adapter_names: list[str] | str | None) -> list[str]:
    """``None``: the active adapter; ``"all"``: the active one first, then the others; or a list."""
    if adapter_names is None:
        return [model.active_adapter]
    if adapter_names == "all":
        return [model.active_adapter] + [n for n in model.adapters if n != model.active_adapter]
    if isinstance(adapter_names, str) or not adapter_names:
        raise ValueError(f"adapter_names={adapter_names!r}: pass a non-empty list of adapter names, or 'all'.")
    names = list(adapter_names)
    if len(set(names)) != len(names):
        raise ValueError(f"adapter_names={names} names an adapter twice; name each once.")
    unknown = [n for n in names if n not in model.adapters]
    if unknown:
        raise ValueError(f"adapter_names: unknown adapter(s) {unknown}; loaded adapters are {sorted(model.adapters)}.")
    return names


def save_adapters(model: HybridModel, directory: Path, card: Any, adapter_names: list[str] | str | None) -> Path:
    names = adapter_names_to_save(model, adapter_names)
    previous = read_index(directory)
    for name in names[1:]:  # everything is checked before anything is written
        target = directory / name
        if target.is_symlink() or target.exists() and not target.is_dir():
            raise NotADirectoryError(f"Cannot save adapter {name!r} to {target}: it is a file. Move it away first.")
        if target.is_dir() and name not in previous and any(target.iterdir()):
            raise FileExistsError(
                f"Cannot save adapter {name!r} into {target}: that folder holds files no earlier save of {directory} "
                "wrote. Move it away, or save into another folder."
            )
    if len(names) == 1:  # one folder, whose config is written last: atomic as it is
        _write_adapters(model, directory, card, names)
        (directory / INDEX_NAME).unlink(missing_ok=True)
    else:  # several folders: staged, so that a failure in any leaves every one as it was
        with staged_save(directory) as staging:
            _write_adapters(model, staging, card, names)
            index = {"library": "peft_hybrid", "root": names[0], "subfolders": names[1:]}
            atomic_write_bytes(staging / INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode())
    for stale in sorted(set(previous) - set(names[1:])):
        _remove_saved(directory / stale)
    return directory


def _write_adapters(model: HybridModel, directory: Path, card: Any, names: list[str]) -> None:
    from peft_hybrid.hub.card import CardData, render_card, write_card

    active = model.active_adapter
    try:
        for position, name in enumerate(names):
            folder = directory if position == 0 else directory / name
            folder.mkdir(exist_ok=True)
            model.set_adapter(name)  # the card counts the saved adapter's trainable parameters
            if model._adapters[name].owns_base:
                model.base_model.save_pretrained(folder, safe_serialization=True)
            save_adapter(folder, model.hybrid_config, model.adapter_tensors())
            own = card if position == 0 and card is not None else CardData.from_model(model)
            if position == 0 and len(names) > 1:
                text = own if isinstance(own, str) else render_card(own)
                own = text.rstrip("\n") + "\n\n" + adapters_table(model, names) + "\n"
            write_card(folder, own)
    finally:
        model.set_adapter(active)


def _remove_saved(folder: Path) -> None:
    """Remove what a save wrote into ``folder`` (an adapter no longer saved); the folder goes if then empty."""
    if folder.is_symlink() or not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and written_by_save(path.name):
            path.unlink()
    left = sorted(p.name for p in folder.iterdir())
    if left:
        logger.warning("%s is no longer a saved adapter; kept the files the save did not write: %s", folder, left)
    else:
        folder.rmdir()


def adapters_table(model: HybridModel, names: list[str]) -> str:
    """The root card's list of the adapters saved together, and the one base they share."""
    base = model.adapters[names[0]].base_model_name_or_path or "(a local base model)"
    lines = [
        "## Adapters in this repository",
        "",
        f"All share one frozen base, `{base}`; load any of them onto it with "
        "`model.load_adapter(repo_or_folder, name, subfolder=...)`.",
        "",
        "| adapter | subfolder | mode | task | trainable params |",
        "|---|---|---|---|---|",
    ]
    for position, name in enumerate(names):
        config = model.adapters[name]
        count = sum(t.numel() for t in model.adapter_tensors(name).values())
        where = "(root)" if position == 0 else f"`{name}/`"
        lines.append(f"| {name} | {where} | {config.mode} | {config.task or '-'} | {count:,} |")
    return "\n".join(lines)
