"""The one hierarchy of Hub failures, and the helpers that keep tokens out of their messages.

Every entry point that talks to the Hub (downloads, pushes, the Trainer's push, the reachability
probe, the CLI) raises these, so ``except HubError`` catches them all::

    HubError (OSError)
    ├── HubAuthenticationError (also PermissionError)  the token was rejected, or none was given for a write
    ├── HubAccessError (also PermissionError)          a valid token that may not write to (or read) the repo
    └── HubUnavailableError (also ConnectionError)     the Hub kept failing after the retries
        └── HubUnreachableError                        offline (HF_HUB_OFFLINE=1, local_files_only) or no answer

A repo id that does not exist (or a private repo without a token) is bad input, not a Hub
failure: downloads raise `peft_hybrid.serialization.AdapterLoadError` for it.

Example:
    >>> err = HubUnreachableError("the Hub cannot be used (HF_HUB_OFFLINE=1)", "me/tiny")
    >>> isinstance(err, HubError), isinstance(err, ConnectionError), err.repo_id
    (True, True, 'me/tiny')
"""

from __future__ import annotations

from collections.abc import Iterable

from huggingface_hub import get_token

OFFLINE_HINT = (
    "To run without the Hub: pass local data files in the benchmark's original format "
    "(--train_file/--validation_file/--test_file), a model folder (--model_name_or_path PATH, "
    "or --base PATH), a random offline model (--model_preset tiny), or try `peft-hybrid demo`."
)
# HTTP statuses that mean "the Hub is having trouble, try again", not "your request is wrong".
UNAVAILABLE_STATUS = (408, 429, 500, 502, 503, 504)
LOGIN_HINT = "pass token=..., set HF_TOKEN, or log in with `hf auth login`"


class HubError(OSError):
    """A Hub operation failed; ``repo_id`` names the repository (when known). The message says what to do."""

    def __init__(self, message: str, repo_id: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id


class HubAuthenticationError(HubError, PermissionError):
    """The Hub rejected the token (or a write was attempted without one)."""


class HubAccessError(HubError, PermissionError):
    """The token is valid but may not write to (or read) the repository."""


class HubUnavailableError(HubError, ConnectionError):
    """The Hub could not be reached, or kept failing, after the retries."""


class HubUnreachableError(HubUnavailableError):
    """The Hub cannot be used here at all: offline mode, ``local_files_only``, or the endpoint does not answer.

    Raised before any transfer is attempted, and never retried.
    """


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


def token_secrets(token: str | bool | None) -> list[str]:
    """The tokens a request with ``token`` may carry (the one given, and the stored login unless ``False``)."""
    found = [token] if isinstance(token, str) and token else []
    if token is not False:
        stored = get_token()
        if stored and stored not in found:
            found.append(stored)
    return found


def error_chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes/contexts, outermost first."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def short_reason(err: BaseException, secrets: Iterable[str | None]) -> str:
    """The innermost cause, one line, without secrets (the full text may quote request headers)."""
    root = error_chain(err)[-1]
    line = str(root).strip().splitlines()[0] if str(root).strip() else ""
    return scrub(f"{type(root).__name__}: {line}" if line else type(root).__name__, secrets)
