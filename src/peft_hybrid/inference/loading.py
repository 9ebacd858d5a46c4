"""Loading a saved adapter for use: the adapter, its base (the one resolver) and its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from peft_hybrid.config import HybridConfig
from peft_hybrid.hub.access import require_hub
from peft_hybrid.hub.download import resolve_folder, split_subfolder
from peft_hybrid.modeling.loading import load_base, load_base_model
from peft_hybrid.modeling.model import HybridModel
from peft_hybrid.modeling.serialization import AdapterLoadError, adapter_path_problem
from peft_hybrid.offline.presets import preset_id

_TOKENIZER_FILES = ("tokenizer_config.json", "spiece.model", "tokenizer.json")
_TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_for_inference(
    adapter: str | Path,
    *,
    base: str | None = None,
    preset: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
    adapter_name: str = "default",
    quantization_config: Any = None,
    subfolder: str | None = None,
) -> tuple[HybridModel, Any]:
    """A saved adapter (folder or Hub id) on its base, in eval mode, with its tokenizer.

    Args:
        adapter: folder written by ``save_pretrained``/a training run, or a Hub repo id.
        base: base model id or folder overriding the one named in the adapter config.
        preset: offline preset base (``tiny`` ...) overriding both.
        revision: revision of ``adapter`` on the Hub.
        device: where to put the model (default: CUDA when available, else CPU).
        quantization_config: a ``BitsAndBytesConfig`` quantizing the base as it loads (see
            `peft_hybrid.modeling.quantization`, whose ``bnb_config`` builds one from a TGI name).
        subfolder: one adapter of a folder or repo holding several (also ``owner/name:subfolder``).

    The tokenizer saved beside the adapter (training runs save it) wins over the base's.
    """
    if not str(adapter).strip():  # Path("") is the current folder: never load that by accident
        raise ValueError(f"adapter {str(adapter)!r}: pass an adapter folder or Hub repo id.")
    adapter, subfolder = split_subfolder(adapter, subfolder)
    if not Path(adapter).is_dir():
        problem = adapter_path_problem(adapter)
        if problem is not None:
            raise AdapterLoadError(problem)
        if _looks_like_path(str(adapter)):
            raise FileNotFoundError(
                f"adapter {str(adapter)!r}: no such folder. Pass the output_dir of a training run (or a folder "
                "written by save_pretrained), or a Hub repo id (owner/name)."
            )
        require_hub(f"adapter {str(adapter)!r}", str(adapter), revision=revision)
    folder = resolve_folder(adapter, revision=revision, token=token, subfolder=subfolder)
    config = HybridConfig.load(folder)
    # The tokenizer saved beside the adapter wins; the base's is fetched only when there is none.
    tokenizer = _saved_tokenizer(folder) if any((folder / name).is_file() for name in _TOKENIZER_FILES) else None
    if config.trains_base:
        model = HybridModel.from_pretrained(folder, adapter_name=adapter_name, quantization_config=quantization_config)
    else:
        name = preset_id(preset) if preset is not None else base or config.base_model_name_or_path
        revision = None if (base or preset) else config.revision
        quantized = {"quantization_config": quantization_config}
        if tokenizer is None:
            base_model, tokenizer = load_base(name, revision=revision, token=token, **quantized)
        else:
            base_model = load_base_model(name, revision=revision, token=token, **quantized)
        model = HybridModel.from_pretrained(
            folder, base_model=base_model, tokenizer=tokenizer, adapter_name=adapter_name
        )
    if tokenizer is None:
        raise ValueError(
            f"{folder} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the tokenizer beside the model."
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def _saved_tokenizer(folder: Path) -> Any:
    """The tokenizer saved beside an adapter; a damaged file is named (the library would not)."""
    from transformers import AutoTokenizer

    for name in _TOKENIZER_JSON:
        file = folder / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise AdapterLoadError(
                    f"{file} is damaged ({err}): the tokenizer saved beside the adapter cannot be read. Save the "
                    "adapter folder again, or copy the tokenizer files of its base model into it."
                ) from None
    return AutoTokenizer.from_pretrained(str(folder))


def _looks_like_path(name: str) -> bool:
    """True for strings that cannot be Hub repo ids (``name`` or ``owner/name``) but are paths."""
    path = Path(name)
    return path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or path.exists()
