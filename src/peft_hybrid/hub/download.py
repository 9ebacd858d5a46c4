"""Downloading adapter folders from the Hub (or its local cache), and what a failed download means.

`resolve_folder` returns a local folder as is and otherwise downloads the repo's adapter files
through huggingface_hub. A failure is sorted by `load_error`: Hub failures (offline, unreachable,
rejected token) raise `peft_hybrid.hub.errors.HubError` subclasses; a repo or revision that does not
exist (or a private repo the token cannot read) is bad input and raises ``AdapterLoadError``.

Example:
    >>> from peft_hybrid.hub.errors import HubError
    >>> try:  # HF_HUB_OFFLINE=1 and nothing cached
    ...     resolve_folder("me/never-downloaded")
    ... except HubError as err:
    ...     print(type(err).__name__)
    HubUnreachableError
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

# huggingface_hub's own export of the HTTP client it is built on, for its transport errors.
from huggingface_hub.utils import httpx as hub_http

from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.hub.errors import (
    LOGIN_HINT,
    UNAVAILABLE_STATUS,
    HubAuthenticationError,
    HubUnavailableError,
    HubUnreachableError,
    scrub,
    token_secrets,
)
from peft_hybrid.modeling.serialization import AdapterLoadError, adapter_path_problem

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

    ``subfolder`` picks one adapter of a folder or repo that holds several, one per subfolder;
    ``owner/name:subfolder`` (or ``folder:subfolder``) says the same in one string (`split_subfolder`).

    Raises:
        HubUnreachableError: offline (or ``local_files_only``) and not cached, or the Hub does not answer.
        HubAuthenticationError: the Hub rejected the token.
        AdapterLoadError: neither a folder nor an existing repo/revision you can read.
    """
    path_or_repo_id, subfolder = split_subfolder(path_or_repo_id, subfolder)
    path = Path(path_or_repo_id)
    if path.is_dir():
        return _subfolder(path, subfolder, str(path_or_repo_id))
    problem = adapter_path_problem(path)  # a file or a link loop is no repo id either
    if problem is not None:
        raise AdapterLoadError(problem)
    repo_id = str(path_or_repo_id)
    patterns = _HUB_PATTERNS if subfolder is None else [f"{subfolder.strip('/')}/{p}" for p in _HUB_PATTERNS]
    try:
        if not (local_files_only or constants.HF_HUB_OFFLINE):
            _check_revision(repo_id, revision, token)
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


def _check_revision(repo_id: str, revision: str | None, token: str | bool | None) -> None:
    """Ask the Hub which commit ``revision`` is, so that a refusal is raised, not answered from the cache.

    snapshot_download answers any HTTP error of that question (a rejected token, a repo made
    private) from the cache when it holds an older commit: silently stale. A Hub that cannot be
    reached at all still falls back to the cache, as offline mode does.
    """
    try:
        HfApi(token=token).repo_info(repo_id, revision=revision, files_metadata=False)
    except HfHubHTTPError as err:
        response = getattr(err, "response", None)
        if response is None or response.status_code in UNAVAILABLE_STATUS:
            return  # the Hub is down: the cache may answer, as when it cannot be reached
        raise
    except (OSError, hub_http.TransportError):  # no connection: the cache may answer
        return


def split_subfolder(source: str | Path, subfolder: str | None = None) -> tuple[str | Path, str | None]:
    """``owner/name:sub`` (or ``folder:sub``) as ``(owner/name, sub)``; anything else as given.

    A path that exists is never split (a folder may have ``:`` in its name), and a ``subfolder``
    given explicitly wins, so the string form is only a shorthand.

    Example:
        >>> split_subfolder("me/flan-t5-tasks:sst2")
        ('me/flan-t5-tasks', 'sst2')
        >>> split_subfolder("me/flan-t5-tasks")
        ('me/flan-t5-tasks', None)
    """
    text = str(source)
    if subfolder is not None or ":" not in text or Path(text).exists():
        return source, subfolder
    where, _, sub = text.rpartition(":")
    if not where or not sub or "/" in sub.strip("/"):
        return source, subfolder
    return where, sub.strip("/")


def load_error(err: Exception, repo_id: str, token: str | bool | None, *, local_files_only: bool = False) -> Exception:
    """The error to raise when downloading ``repo_id`` failed with ``err`` (huggingface_hub's).

    Says which of these happened: the Hub was unreachable / offline and the repo is not cached
    (`HubUnreachableError`), the token was rejected (`HubAuthenticationError`), the repo is
    missing or private, or the revision is missing (``AdapterLoadError``: check the id); a server
    error after huggingface_hub's own retries is a `HubUnavailableError`.
    """
    secrets = token_secrets(token)
    if isinstance(err, LocalEntryNotFoundError):
        cause = err.__cause__
        if local_files_only or isinstance(cause, OfflineModeIsEnabled):
            why = "local_files_only=True" if local_files_only else "the Hub is switched off (HF_HUB_OFFLINE=1)"
            return HubUnreachableError(
                f"{repo_id!r} is not a local folder and is not in the Hub cache, and {why}. Download it once while "
                "online (or unset HF_HUB_OFFLINE), or pass a folder saved by save_pretrained.",
                repo_id,
            )
        return HubUnreachableError(
            f"{repo_id!r} is not in the Hub cache and the Hub could not be reached "
            f"({scrub(_reason(cause), secrets)}). "
            "Check the connection (or HF_ENDPOINT) and retry, or pass a folder saved by save_pretrained.",
            repo_id,
        )
    if isinstance(err, RevisionNotFoundError):
        return AdapterLoadError(f"{repo_id!r} has no such revision (branch, tag or commit); check revision=....")
    if _is_rejected_token(err):
        return HubAuthenticationError(
            f"Authentication failed for {repo_id!r}: the Hub rejected the token (invalid or expired); {LOGIN_HINT}.",
            repo_id,
        )
    if isinstance(err, RepositoryNotFoundError):
        who = "the token given cannot read it" if _has_token(token) else "no token was given"
        return AdapterLoadError(
            f"{repo_id!r} is neither a local folder nor a Hub repository you can read: it does not exist, or it is "
            f"private and {who}. Check the id; for a private repo {LOGIN_HINT}."
        )
    response = getattr(err, "response", None)
    if response is not None and response.status_code in UNAVAILABLE_STATUS:
        return HubUnavailableError(
            f"Could not download {repo_id!r}: the Hub answered {response.status_code} "
            f"({scrub(_reason(err), secrets)}). Try again later.",
            repo_id,
        )
    return AdapterLoadError(f"Could not download {repo_id!r} from the Hub: {scrub(_reason(err), secrets)}")


def _has_token(token: str | bool | None) -> bool:
    return bool(token) if token is not None else get_token() is not None


def _is_rejected_token(err: Exception) -> bool:
    response = getattr(err, "response", None)
    if not isinstance(err, HfHubHTTPError) or response is None or response.status_code != 401:
        return False
    # huggingface_hub reports a 401 on a repo URL as RepositoryNotFoundError (private or missing),
    # except when the server said the credentials themselves are invalid.
    return not isinstance(err, RepositoryNotFoundError) or "invalid credentials" in str(err).lower()


def _reason(err: BaseException | None) -> str:
    return f"{type(err).__name__}: {err}" if err is not None else "unknown error"


def _subfolder(root: Path, subfolder: str | None, source: str) -> Path:
    if subfolder is None:
        return root
    folder = root / subfolder
    if not folder.is_dir():
        held = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())
        raise AdapterLoadError(
            f"{source} has no subfolder {subfolder!r}; the adapters in subfolders there are {held}."
        )
    return folder
