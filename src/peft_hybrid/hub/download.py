"""Downloading adapter folders from the Hub (or its local cache)."""

from __future__ import annotations

from pathlib import Path

from peft_hybrid.modeling.serialization import AdapterLoadError

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.png"]


def resolve_folder(
    path_or_repo_id: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    subfolder: str | None = None,
) -> Path:
    """A local folder as is; otherwise download the repo's adapter files through huggingface_hub.

    ``subfolder`` picks one adapter of a folder or repo that holds several, one per subfolder.
    """
    path = Path(path_or_repo_id)
    if path.is_dir():
        return _subfolder(path, subfolder, str(path_or_repo_id))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    from peft_hybrid.hub.upload import load_error

    repo_id = str(path_or_repo_id)
    patterns = _HUB_PATTERNS if subfolder is None else [f"{subfolder.strip('/')}/{p}" for p in _HUB_PATTERNS]
    try:
        root = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                allow_patterns=patterns,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError) as err:
        raise load_error(err, repo_id, token, local_files_only=local_files_only) from None
    except HFValidationError:  # e.g. an absolute path that does not exist
        raise AdapterLoadError(
            f"{repo_id!r} is neither an existing folder nor a Hub repo id. Pass a folder written by "
            "HybridModel.save_pretrained, or a repo id such as 'owner/name'."
        ) from None
    return _subfolder(root, subfolder, repo_id)


def _subfolder(root: Path, subfolder: str | None, source: str) -> Path:
    if subfolder is None:
        return root
    folder = root / subfolder
    if not folder.is_dir():
        held = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "hybrid_config.json").is_file())
        raise AdapterLoadError(
            f"{source} has no subfolder {subfolder!r}; the adapters in subfolders there are {held}."
        )
    return folder
