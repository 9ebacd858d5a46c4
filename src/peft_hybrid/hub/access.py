"""Fail fast, with a way forward, when a Hub model or dataset id is used without a reachable Hub.

Without network, ``from_pretrained`` of a Hub id retries for about 50 seconds and ends in a long
traceback. `require_hub` is called before anything is fetched from the Hub: it answers at once
under ``HF_HUB_OFFLINE=1`` (where only files already in the local cache can be used) and
otherwise probes the Hub endpoint with a short timeout, raising `HubUnreachableError` whose
message says how to run offline.

Example (under ``HF_HUB_OFFLINE=1``, without the model in the cache):
    >>> try:
    ...     require_hub("model 'google/flan-t5-base'", "google/flan-t5-base")
    ... except HubUnreachableError as err:
    ...     print("--model_preset tiny" in str(err))
    True
"""

from __future__ import annotations

import functools
import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache

from peft_hybrid.config import CONFIG_NAME
from peft_hybrid.hub.errors import OFFLINE_HINT, HubUnreachableError

PROBE_TIMEOUT_S = 3.0
# A cached model repo holds one of these: a base model's config, or an adapter's.
_MODEL_MARKERS = ("config.json", CONFIG_NAME)


def hub_endpoint() -> str:
    """The Hub endpoint huggingface_hub talks to (``HF_ENDPOINT`` as read when it was imported)."""
    return constants.ENDPOINT.rstrip("/")


def hub_offline() -> bool:
    """True when huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1`` when it was imported)."""
    return bool(constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout: float) -> str | None:
    """``None`` when ``endpoint`` answers HTTP at all (any status), else why not."""
    request = urllib.request.Request(endpoint + "/api/models?limit=1", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered: it is reachable, whatever it thinks of the request
    except (urllib.error.URLError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err)) or type(err).__name__


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` when the Hub can be used now; otherwise a short reason (offline flag, probe error)."""
    if hub_offline():
        return "HF_HUB_OFFLINE=1"
    reason = _probe(hub_endpoint(), timeout)
    return None if reason is None else f"{hub_endpoint()} unreachable: {reason}"


def _in_cache(repo_id: str, repo_type: str, revision: str | None) -> bool:
    """True when the local Hub cache holds ``repo_id`` (a base model or an adapter) at ``revision``."""
    markers = _MODEL_MARKERS if repo_type == "model" else ("README.md",)
    for filename in markers:
        try:
            found = try_to_load_from_cache(repo_id, filename, revision=revision, repo_type=repo_type)
        except ValueError:  # not a valid repo id
            return False
        if isinstance(found, str):
            return True
    return False


def require_hub(what: str, repo_id: str, *, repo_type: str = "model", revision: str | None = None) -> None:
    """Raise `HubUnreachableError` (a `peft_hybrid.hub.errors.HubError`) unless ``repo_id`` can be fetched now.

    Args:
        what: what needs it, for the message, e.g. ``"--model_name_or_path 'google/flan-t5-base'"``.
        repo_id: the Hub id (a local folder passes without any check).
        repo_type: ``"model"`` or ``"dataset"``.
        revision: branch, tag or commit.

    Under ``HF_HUB_OFFLINE=1`` a model or adapter repo already in the local Hub cache passes (huggingface_hub
    then reads the cache without network); datasets are left to ``datasets``' own offline cache.
    """
    if Path(repo_id).is_dir():
        return
    reason = hub_unreachable_reason()
    if reason is None:
        return
    if hub_offline() and (repo_type == "dataset" or _in_cache(repo_id, repo_type, revision)):
        return
    cached = " (and it is not in the local cache)" if hub_offline() else ""
    raise HubUnreachableError(
        f"{what} is a Hub {repo_type} id, but the Hugging Face Hub cannot be used ({reason}){cached}. {OFFLINE_HINT}",
        repo_id,
    )
