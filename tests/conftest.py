"""Shared test fixtures.

Tests never reach the network: the Hub is switched off here, and tests that need a Hub use the
project's own server on 127.0.0.1.
"""

import os
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread in child processes too (recipes, the CLI, servers), for the reason given below.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from a second thread, and on a busy 2-core machine two threads
# contend badly (a tiny training step measured 0.04 s with one thread, 2 s with two).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one intra-op thread, whatever an earlier one (a CLI run's ``--threads``) set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_dynamo():
    """No compiled code and zero compile counts before the test, no compiled code after it.

    ``torch._dynamo.reset()`` drops compiled code; the counters ``dynamo_counters`` reads are kept
    apart from it and cleared on their own."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


# hub_server / hub_online: a local Hub-compatible server for push/pull tests.
pytest_plugins = ["hub_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
# The public benchmark files live beside a checkout, never inside it.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with the real benchmark files; the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("benchmark data folder ../shared/data is absent")
    return SHARED_DATA


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Every ``time.sleep`` this test's thread asks for (it still sleeps), in order.

    A retry waits its backoff through ``time.sleep`` (ours and huggingface_hub's), so "no retries,
    no backoff" is ``sleeps == []``, however busy the machine; other threads (a Hub server in the
    test process) are not counted.
    """
    waits: list[float] = []
    real_sleep, thread = time.sleep, threading.get_ident()

    def spy(seconds: float) -> None:
        if threading.get_ident() == thread:
            waits.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", spy)
    return waits
