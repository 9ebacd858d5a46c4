"""Saving one or several named adapters of a `HybridModel` into a folder, or pushing them to the Hub.

One adapter: today's folder (``hybrid_config.json``, ``adapter_model.safetensors``, ``README.md``).
Several: PEFT's layout, the first at the root and each other in a ``<name>/`` subfolder, each a
complete folder of its own; the root card gains a table of every adapter and the shared base.
`push_model` saves that folder and uploads it with `peft_hybrid.hub.upload.push_folder`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.hub.card import CardData, render_card, write_card
from peft_hybrid.hub.upload import DEFAULT_BACKOFF, DEFAULT_RETRIES, push_folder
from peft_hybrid.serialization import save_adapter

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from peft_hybrid.modeling.model import HybridModel


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
    return directory


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


def push_model(
    model: HybridModel,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    card: CardData | str | None = None,
    endpoint: str | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    adapter_names: list[str] | str | None = None,
) -> CommitInfo:
    """Save ``model`` to a temporary folder and push it (see `push_folder`); `HybridModel.push_to_hub`.

    ``card`` defaults to the model's own card data with ``repo_id`` in the usage snippet.
    ``adapter_names`` (a list or ``"all"``) pushes several adapters as ``save_pretrained`` lays
    them out: the first at the root, each other in its ``<name>/`` subfolder.

    Example:
        >>> from peft_hybrid import HybridConfig, HybridModel
        >>> from peft_hybrid.offline import t5_from_preset
        >>> base, tok = t5_from_preset("tiny")
        >>> model = HybridModel(base, HybridConfig(task="samsum"), tokenizer=tok)
        >>> push_model(model, "me/tiny-hybrid", private=True)  # doctest: +SKIP
    """
    if card is None:
        card = CardData.from_model(model, repo_id=repo_id)
    elif isinstance(card, CardData) and card.repo_id is None:
        card.repo_id = repo_id
    with tempfile.TemporaryDirectory(prefix="peft-hybrid-push-") as tmp:
        model.save_pretrained(tmp, card=card, adapter_names=adapter_names)
        settings = dict(
            token=token, revision=revision, commit_message=commit_message, endpoint=endpoint, retries=retries
        )
        subfolders = sorted(p for p in Path(tmp).iterdir() if (p / CONFIG_NAME).is_file())
        for sub in subfolders:  # the other adapters first: the root commit then finds them all in place
            push_folder(sub, repo_id, private=private, path_in_repo=sub.name, backoff=backoff, **settings)
        return push_folder(tmp, repo_id, private=private, backoff=backoff, **settings)
