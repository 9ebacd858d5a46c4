"""Pushing adapters to the Hugging Face Hub, and what Hub failures mean for the user.

`push_folder` uploads a saved adapter folder (config, safetensors, card, metrics, images; never
checkpoints, predictions or tokens) to a repo, creating it when needed. Network failures and
server errors are retried a few times with exponential backoff, then raised as
`HubUnavailableError` naming the repo and what to do; the local folder is only ever read, and a
later push sends only the files the Hub does not hold yet (the Hub compares content hashes
before anything is uploaded). A rejected token raises `HubAuthenticationError`, a repo the
token may not write to `HubAccessError`. Tokens are scrubbed from every message raised or logged.

Example:
    >>> from peft_hybrid.hub.upload import push_folder
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.offline import t5_from_preset
    >>> base, tok = t5_from_preset("tiny")
    >>> model = HybridModel(base, HybridConfig(task="samsum"), tokenizer=tok)
    >>> _ = model.save_pretrained("runs/samsum")
    >>> push_folder("runs/samsum", "me/flan-t5-samsum-hybrid", private=True)  # doctest: +SKIP
    >>> model.push_to_hub("me/flan-t5-samsum-hybrid")  # the same, from a HybridModel  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

# huggingface_hub's own export of the HTTP client it is built on, for its transport errors.
from huggingface_hub.utils import httpx as hub_http

from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.hub.card import CardData
from peft_hybrid.hub.errors import (
    LOGIN_HINT,
    UNAVAILABLE_STATUS,
    HubAccessError,
    HubAuthenticationError,
    HubError,
    HubUnavailableError,
    HubUnreachableError,
    error_chain,
    scrub,
    short_reason,
    token_secrets,
)
from peft_hybrid.modeling.saving import INDEX_NAME, read_index, written_by_save
from peft_hybrid.modeling.serialization import WEIGHTS_NAME

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from peft_hybrid.modeling.model import HybridModel

logger = logging.getLogger(__name__)

DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 1.0
# What a push uploads from an output folder: the adapter, its card and images, the metrics, and
# (mode full) the base weights. Not predictions (they quote the data), checkpoints or arguments.
PUSH_PATTERNS = (
    CONFIG_NAME,
    WEIGHTS_NAME,
    INDEX_NAME,
    "README.md",
    "*.png",
    "training_summary.json",
    "*_metrics-*.json",
    "all_results.json",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
)


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
    allow_patterns: Iterable[str] = PUSH_PATTERNS,
    path_in_repo: str = "",
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    delete_files: Iterable[str] = (),
) -> CommitInfo:
    """Upload an adapter folder written by ``save_pretrained`` (or a trainer) to ``repo_id``.

    Args:
        folder: the local folder; it is read, never changed.
        repo_id: ``user/name`` or ``name`` in the token's namespace (created if missing;
            ``private`` applies only then).
        token: a Hub token; ``None`` uses HF_TOKEN or the stored login.
        revision: a branch to push to (created from ``main`` if missing); default ``main``.
        commit_message: defaults to "Upload peft_hybrid adapter".
        endpoint: the Hub URL; default huggingface_hub's (``HF_ENDPOINT``).
        allow_patterns: which top-level files to upload (default `PUSH_PATTERNS`).
        path_in_repo: a folder in the repo to upload into (default the repo root).
        retries: how many times a network failure or server error is retried.
        backoff: seconds before the first retry; doubled for each further one.
        delete_files: repo paths removed in the same commit (an adapter a previous push wrote and
            this one no longer holds).

    Returns:
        huggingface_hub's ``CommitInfo`` (no new commit when nothing changed).

    Raises:
        FileNotFoundError: ``folder`` is not an adapter folder.
        HubAuthenticationError, HubAccessError: bad token / not your repo (not retried).
        HubUnavailableError: still failing after the retries; the message says how to resume.

    Example:
        >>> push_folder("runs/sst2", "me/tiny-sst2", token=False)  # doctest: +SKIP
    """
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{folder} holds no {CONFIG_NAME}: pass a folder written by HybridModel.save_pretrained or HybridTrainer."
        )
    if retries < 0 or backoff < 0:
        raise ValueError(f"retries={retries} and backoff={backoff} must not be negative.")
    _check_repo_id(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    secrets = token_secrets(token)
    files = _files_to_push(folder, allow_patterns)
    message = commit_message or "Upload peft_hybrid adapter"

    prefix = path_in_repo.strip("/") + "/" if path_in_repo.strip("/") else ""

    def attempt() -> CommitInfo:
        full_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision not in (None, "main"):
            api.create_branch(full_id, branch=revision, exist_ok=True)
        operations: list = [CommitOperationAdd(prefix + name, path) for name, path in files]
        operations += [CommitOperationDelete(path) for path in delete_files]
        return api.create_commit(full_id, operations, commit_message=message, revision=revision)

    return _with_retries(attempt, repo_id, api.endpoint, secrets, retries, backoff, folder)


def create_repo(
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    endpoint: str | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
) -> str:
    """Create ``repo_id`` if it does not exist; returns the full ``user/name`` id.

    Fails early (same errors as `push_folder`) when the token is rejected or may not write there.

    Example:
        >>> create_repo("tiny-samsum", private=True)  # doctest: +SKIP
        'me/tiny-samsum'
    """
    _check_repo_id(repo_id)
    api = HfApi(endpoint=endpoint, token=token)

    def attempt() -> str:
        return api.create_repo(repo_id, private=private, exist_ok=True).repo_id

    return _with_retries(attempt, repo_id, api.endpoint, token_secrets(token), retries, backoff, None)


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
        api = HfApi(endpoint=endpoint, token=token)
        stale = _with_retries(
            lambda: _stale_files(api, repo_id, revision, [p.name for p in subfolders]),
            repo_id,
            api.endpoint,
            token_secrets(token),
            retries,
            backoff,
            None,
        )
        return push_folder(tmp, repo_id, private=private, backoff=backoff, delete_files=stale, **settings)


def _stale_files(api: HfApi, repo_id: str, revision: str | None, kept: list[str]) -> list[str]:
    """The files an earlier multi-adapter push wrote for adapters this push no longer holds.

    Only subfolders that push recorded in its ``hybrid_adapters.json``, and only the files a save writes:
    anything else in the repo stays.
    """
    try:
        files = api.list_repo_files(repo_id, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return []  # a new repo or branch (or one the token cannot read: the push itself says so)
    if INDEX_NAME not in files:
        return []
    with tempfile.TemporaryDirectory(prefix="peft-hybrid-index-") as tmp:
        api.hf_hub_download(repo_id, INDEX_NAME, revision=revision, local_dir=tmp)
        stale = set(read_index(Path(tmp))) - set(kept)
    return [
        path
        for path in files
        if path.count("/") == 1 and path.split("/")[0] in stale and written_by_save(path.split("/")[1])
    ]


# --- internals ------------------------------------------------------------------------------
def _with_retries(
    attempt, repo_id: str, endpoint: str, secrets: list[str], retries: int, backoff: float, folder: Path | None
):
    for number in range(retries + 1):
        try:
            return attempt()
        except Exception as err:  # classified below; anything unknown is re-raised as is
            final = _push_error(err, repo_id, endpoint, secrets)
            if final is None:
                raise
            if _retryable(final) and number < retries:
                wait = backoff * 2**number
                logger.warning(
                    "Push to %s failed (%s); retry %d of %d in %.1f s.",
                    repo_id,
                    short_reason(err, secrets),
                    number + 1,
                    retries,
                    wait,
                )
                time.sleep(wait)
                continue
            if _retryable(final):
                what = f"push {folder} to" if folder is not None else "create"
                again = f" (`peft-hybrid push {folder} {repo_id}`)" if folder is not None else ""
                final = HubUnavailableError(
                    f"Could not {what} {repo_id!r} at {endpoint} after {retries + 1} attempt(s): "
                    f"{short_reason(err, secrets)}. "
                    f"Nothing local was changed. Try again when the Hub is reachable{again}; files already on the "
                    "Hub are not uploaded again.",
                    repo_id,
                )
            raise final from None
    raise AssertionError("unreachable")


def _push_error(err: Exception, repo_id: str, endpoint: str, secrets: list[str]) -> HubError | None:
    """Classify a failed push: a `HubError` to raise or retry, or None for a programming error."""
    for cause in error_chain(err):
        if isinstance(cause, OfflineModeIsEnabled):
            return HubUnreachableError(f"Cannot push {repo_id!r}: HF_HUB_OFFLINE=1 is set. Unset it to push.", repo_id)
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            status = cause.response.status_code
            if status == 401:
                if not secrets:
                    return HubAuthenticationError(
                        f"Cannot push to {repo_id!r} without a token: {LOGIN_HINT}.", repo_id
                    )
                return HubAuthenticationError(
                    f"Authentication failed pushing to {repo_id!r} at {endpoint}: the Hub rejected the token "
                    f"(invalid or expired); {LOGIN_HINT}.",
                    repo_id,
                )
            if status in (403, 404) or isinstance(cause, RepositoryNotFoundError):
                return HubAccessError(
                    f"The Hub refused the push to {repo_id!r} ({status}): the token's user may not write there "
                    "(another user's or organisation's repo). Push to your own namespace, or ask the owner for write "
                    "access.",
                    repo_id,
                )
            if status in UNAVAILABLE_STATUS:
                return HubUnavailableError(scrub(str(cause), secrets), repo_id)
            return HubError(f"The Hub refused the push to {repo_id!r}: {short_reason(cause, secrets)}", repo_id)
        if isinstance(cause, (hub_http.TransportError, ConnectionError, TimeoutError)):
            return HubUnavailableError(scrub(str(cause), secrets), repo_id)
    # huggingface_hub wraps any failure of an LFS transfer (after its own retries) this way.
    if isinstance(err, RuntimeError) and str(err).startswith("Error while uploading"):
        return HubUnavailableError(short_reason(err, secrets), repo_id)
    return None


def _retryable(error: HubError) -> bool:
    """Server trouble and dropped connections are retried; offline mode and refusals are not."""
    return isinstance(error, HubUnavailableError) and not isinstance(error, HubUnreachableError)


def _files_to_push(folder: Path, patterns: Iterable[str]) -> list[tuple[str, Path]]:
    patterns = list(patterns)
    files = sorted(
        (p.name, p) for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    )
    return files


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not all(repo_id.split("/")):
        raise ValueError(
            f"repo_id={repo_id!r}: pass a Hub repo id of the form 'user/name' (or 'name' in your namespace)."
        )
