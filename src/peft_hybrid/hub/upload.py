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

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.modeling.serialization import AdapterLoadError

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from peft_hybrid.hub.card import CardData
    from peft_hybrid.modeling.model import HybridModel

logger = logging.getLogger(__name__)

DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 1.0
# What a push uploads from an output folder: the adapter, its card and images, the metrics, and
# (mode full) the base weights. Not predictions (they quote the data), checkpoints or arguments.
PUSH_PATTERNS = (
    CONFIG_NAME,
    "adapter_model.safetensors",
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
# The usage snippet of a card written before the repo id was known.
_CARD_PLACEHOLDER = "path/to/adapter"
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_LOGIN_HINT = "pass token=..., set HF_TOKEN, or log in with `hf auth login`"


class HubError(OSError):
    """A Hub operation failed; ``repo_id`` names the repository. The message says what to do."""

    def __init__(self, message: str, repo_id: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id


class HubAuthenticationError(HubError, PermissionError):
    """The Hub rejected the token (or a write was attempted without one)."""


class HubAccessError(HubError, PermissionError):
    """The token is valid but may not write to (or read) the repository."""


class HubUnavailableError(HubError, ConnectionError):
    """The Hub could not be reached, or kept failing, after the retries."""


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
    secrets = _secrets(token)
    files = _files_to_push(folder, allow_patterns)
    message = commit_message or "Upload peft_hybrid adapter"

    prefix = path_in_repo.strip("/") + "/" if path_in_repo.strip("/") else ""

    def attempt() -> CommitInfo:
        full_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision not in (None, "main"):
            api.create_branch(full_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(prefix + name, _content(path, full_id)) for name, path in files]
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

    return _with_retries(attempt, repo_id, api.endpoint, _secrets(token), retries, backoff, None)


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
        >>> push_model(model, "me/tiny-hybrid", private=True)  # doctest: +SKIP
    """
    from peft_hybrid.hub.card import CardData

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


def load_error(err: Exception, repo_id: str, token: str | bool | None, *, local_files_only: bool = False) -> Exception:
    """The error to raise when downloading ``repo_id`` failed with ``err`` (huggingface_hub's).

    Says which of these happened: the token was rejected, the repo is missing or private, the
    revision is missing, or the Hub was unreachable / offline and the repo is not cached.
    """
    secrets = _secrets(token)
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(err, LocalEntryNotFoundError):
        cause = err.__cause__
        if local_files_only or isinstance(cause, OfflineModeIsEnabled):
            why = "local_files_only=True" if local_files_only else "the Hub is switched off (HF_HUB_OFFLINE=1)"
            return AdapterLoadError(
                f"{repo_id!r} is not a local folder and is not in the Hub cache, and {why}. Download it once while "
                "online (or unset HF_HUB_OFFLINE), or pass a folder saved by save_pretrained."
            )
        return AdapterLoadError(
            f"{repo_id!r} is not in the Hub cache and the Hub could not be reached "
            f"({scrub(_reason(cause), secrets)}). "
            "Check the connection (or HF_ENDPOINT) and retry, or pass a folder saved by save_pretrained."
        )
    if isinstance(err, RevisionNotFoundError):
        return AdapterLoadError(f"{repo_id!r} has no such revision (branch, tag or commit); check revision=....")
    if _is_rejected_token(err):
        return HubAuthenticationError(
            f"Authentication failed for {repo_id!r}: the Hub rejected the token (invalid or expired); {_LOGIN_HINT}.",
            repo_id,
        )
    if isinstance(err, RepositoryNotFoundError):
        who = "the token given cannot read it" if _has_token(token) else "no token was given"
        return AdapterLoadError(
            f"{repo_id!r} is neither a local folder nor a Hub repository you can read: it does not exist, or it is "
            f"private and {who}. Check the id; for a private repo {_LOGIN_HINT}."
        )
    return AdapterLoadError(f"Could not download {repo_id!r} from the Hub: {scrub(_reason(err), secrets)}")


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret replaced by ``***``.

    Example:
        >>> scrub("Bearer hf_abc failed", ["hf_abc"])
        'Bearer *** failed'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


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
            if isinstance(final, HubUnavailableError) and number < retries:
                wait = backoff * 2**number
                logger.warning(
                    "Push to %s failed (%s); retry %d of %d in %.1f s.",
                    repo_id,
                    _short(err, secrets),
                    number + 1,
                    retries,
                    wait,
                )
                time.sleep(wait)
                continue
            if isinstance(final, HubUnavailableError):
                what = f"push {folder} to" if folder is not None else "create"
                again = f" (`peft-hybrid push {folder} {repo_id}`)" if folder is not None else ""
                final = HubUnavailableError(
                    f"Could not {what} {repo_id!r} at {endpoint} after {retries + 1} attempt(s): "
                    f"{_short(err, secrets)}. "
                    f"Nothing local was changed. Try again when the Hub is reachable{again}; files already on the "
                    "Hub are not uploaded again.",
                    repo_id,
                )
            raise final from None
    raise AssertionError("unreachable")


def _push_error(err: Exception, repo_id: str, endpoint: str, secrets: list[str]) -> HubError | None:
    """Classify a failed push: a `HubError` to raise or retry, or None for a programming error."""
    import httpx2

    for cause in _chain(err):
        if isinstance(cause, OfflineModeIsEnabled):
            return HubError(f"Cannot push {repo_id!r}: HF_HUB_OFFLINE=1 is set. Unset it to push.", repo_id)
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            status = cause.response.status_code
            if status == 401:
                if not secrets:
                    return HubAuthenticationError(
                        f"Cannot push to {repo_id!r} without a token: {_LOGIN_HINT}.", repo_id
                    )
                return HubAuthenticationError(
                    f"Authentication failed pushing to {repo_id!r} at {endpoint}: the Hub rejected the token "
                    f"(invalid or expired); {_LOGIN_HINT}.",
                    repo_id,
                )
            if status in (403, 404) or isinstance(cause, RepositoryNotFoundError):
                return HubAccessError(
                    f"The Hub refused the push to {repo_id!r} ({status}): the token's user may not write there "
                    "(another user's or organisation's repo). Push to your own namespace, or ask the owner for write "
                    "access.",
                    repo_id,
                )
            if status in _RETRY_STATUS:
                return HubUnavailableError(scrub(str(cause), secrets), repo_id)
            return HubError(f"The Hub refused the push to {repo_id!r}: {_short(cause, secrets)}", repo_id)
        if isinstance(cause, (httpx2.TransportError, ConnectionError, TimeoutError)):
            return HubUnavailableError(scrub(str(cause), secrets), repo_id)
    # huggingface_hub wraps any failure of an LFS transfer (after its own retries) this way.
    if isinstance(err, RuntimeError) and str(err).startswith("Error while uploading"):
        return HubUnavailableError(_short(err, secrets), repo_id)
    return None


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _files_to_push(folder: Path, patterns: Iterable[str]) -> list[tuple[str, Path]]:
    patterns = list(patterns)
    files = sorted(
        (p.name, p) for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    )
    return files


def _content(path: Path, repo_id: str) -> Path | bytes:
    """The file as uploaded: a card still showing the placeholder gets the real repo id."""
    if path.name == "README.md":
        text = path.read_text(encoding="utf-8")
        if _CARD_PLACEHOLDER in text:
            return text.replace(_CARD_PLACEHOLDER, repo_id).encode("utf-8")
    return path


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not all(repo_id.split("/")):
        raise ValueError(
            f"repo_id={repo_id!r}: pass a Hub repo id of the form 'user/name' (or 'name' in your namespace)."
        )


def _secrets(token: str | bool | None) -> list[str]:
    found = [token] if isinstance(token, str) and token else []
    if token is not False:
        stored = get_token()
        if stored and stored not in found:
            found.append(stored)
    return found


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


def _short(err: BaseException, secrets: list[str]) -> str:
    """The innermost cause, one line, without secrets (the full text may quote request headers)."""
    root = _chain(err)[-1]
    line = str(root).strip().splitlines()[0] if str(root).strip() else ""
    return scrub(f"{type(root).__name__}: {line}" if line else type(root).__name__, secrets)
