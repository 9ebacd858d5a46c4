"""pytest fixtures for tests that talk to a local Hub server with the real huggingface_hub client.

Register with ``pytest_plugins = ["fixtures"]`` in a conftest.py. The suite
runs with ``HF_HUB_OFFLINE=1`` and huggingface_hub has already read HF_ENDPOINT at import time, so:

* in-process calls take ``endpoint=hub_server.url`` and use the ``hub_online`` fixture;
* child processes get ``hub_server.subprocess_env(token=...)`` as their environment.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from peft_hybrid.hub_server.server import SLOW_MACHINE_TIMEOUT_S, HubServer


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """One local Hub server for the whole session, with users alice and bob (random tokens).

    Tokens: ``hub_server.token("alice")``. Use repo names unique to your test: the server is shared.
    """
    pytest.importorskip("fastapi", reason="the hub-server extra (fastapi, uvicorn) is not installed")
    pytest.importorskip("uvicorn", reason="the hub-server extra (fastapi, uvicorn) is not installed")
    users = {"alice": f"hf_{secrets.token_hex(16)}", "bob": f"hf_{secrets.token_hex(16)}"}
    with HubServer(tmp_path_factory.mktemp("hub-server"), users) as server:
        yield server


@pytest.fixture
def hub_online(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """``hub_server``, with this test's in-process huggingface_hub calls allowed to reach it.

    huggingface_hub checks ``constants.HF_HUB_OFFLINE`` (through ``is_offline_mode()``) on every
    request and ``constants.HF_HUB_DISABLE_XET`` before each upload/download, so patching the two
    constants for the test is enough; the Xet protocol, which this server lacks, stays off.
    The etag and download timeouts are raised too, as `HubServer.subprocess_env` does.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # The 10 s defaults trip on a busy machine; the ones read per call wait as long as a child's do.
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", SLOW_MACHINE_TIMEOUT_S)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", SLOW_MACHINE_TIMEOUT_S)
    return hub_server
