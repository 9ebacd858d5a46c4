"""One Hub error hierarchy: ``except HubError`` catches offline and unreachable failures from every
entry point (download, push, the trainer's repo creation, the probe, the CLI), and the CLI exits 1."""

import pytest
from huggingface_hub import constants
from huggingface_hub.utils import httpx as hub_http

from helpers import tiny_model
from peft_hybrid import HubError, HubUnavailableError, HubUnreachableError, HybridModel
from peft_hybrid.cli import main as cli
from peft_hybrid.hub.access import require_hub
from peft_hybrid.hub.download import resolve_folder
from peft_hybrid.hub.upload import _push_error, create_repo, push_folder


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    model, _ = tiny_model("lora")
    model.save_pretrained(folder)
    return folder, model


def test_every_python_entry_point_raises_a_hub_error_when_offline(offline, adapter, sleeps):
    folder, model = adapter
    calls = {
        "probe": lambda: require_hub("adapter 'me/never'", "me/never"),
        "resolve_folder": lambda: resolve_folder("me/never"),
        "from_pretrained": lambda: HybridModel.from_pretrained(
            "me/never", base_model=tiny_model("lora")[0].base_model
        ),
        "push_folder": lambda: push_folder(folder, "me/offline-push", token="hf_unused", backoff=5.0),
        "push_to_hub": lambda: model.push_to_hub("me/offline-push", token="hf_unused", backoff=5.0),
        "create_repo (the trainer's first push)": lambda: create_repo("me/offline-push", token="hf_unused"),
    }
    for name, call in calls.items():
        with pytest.raises(HubError) as info:
            call()
        assert isinstance(info.value, HubUnreachableError), name
        assert "HF_HUB_OFFLINE" in str(info.value), name
    assert sleeps == []  # offline is final: no retries, no backoff


def test_the_cli_exits_1_for_hub_failures_and_2_for_bad_input(offline, adapter, capsys, tmp_path):
    folder, _ = adapter
    assert cli(["push", str(folder), "me/offline-push", "--retries", "0"]) == 1
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err
    (tmp_path / "in.txt").write_text("hello\n", encoding="utf-8")
    assert cli(["predict", "--adapter", "me/never", "--input", str(tmp_path / "in.txt")]) == 1
    assert "not in the local cache" in capsys.readouterr().err
    assert cli(["predict", "--adapter", "./no/such/folder", "--input", str(tmp_path / "in.txt")]) == 2


def test_transport_errors_of_the_hub_client_are_retryable_unavailability():
    """huggingface_hub's HTTP client errors (its own export, not a direct import) sort as HubUnavailableError."""
    err = hub_http.ConnectError("connection refused")
    sorted_error = _push_error(err, "me/x", "http://127.0.0.1:1", [])
    assert type(sorted_error) is HubUnavailableError and sorted_error.repo_id == "me/x"
    assert _push_error(ValueError("a bug"), "me/x", "http://127.0.0.1:1", []) is None  # not a Hub failure
