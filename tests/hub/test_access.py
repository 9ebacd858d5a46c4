"""Offline behaviour: a Hub id without a usable Hub fails at once (no retries), saying how to run offline."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants

from peft_hybrid.cli import main as cli
from peft_hybrid.hub import access as hub_access
from peft_hybrid.hub.access import require_hub
from peft_hybrid.hub.errors import HubError, HubUnreachableError
from peft_hybrid.training.recipe import run as run_recipe

REPO = Path(__file__).resolve().parents[2]
OFFLINE_OPTIONS = ("--train_file", "--model_name_or_path", "--model_preset tiny", "peft-hybrid demo")


@pytest.fixture
def closed_endpoint(monkeypatch) -> str:
    """An http://127.0.0.1:<port> where nothing listens, as the Hub endpoint, with offline mode off."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return endpoint


def assert_offline_advice(stderr: str) -> None:
    """The error is the last line of stderr, one line, naming every offline option."""
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert ": error: " in message
    for option in OFFLINE_OPTIONS:
        assert option in message, option


def test_recipe_with_hub_model_fails_at_once_on_a_closed_endpoint(closed_endpoint, tmp_path, capsys, sleeps):
    code = run_recipe(["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"], task="sst2")
    assert sleeps == []  # no retry, no backoff: the probe's answer is final
    assert code == 1
    err = capsys.readouterr().err
    assert f"{closed_endpoint} unreachable" in err and "'nyu-mll/glue'" in err
    assert_offline_advice(err)


def test_recipe_with_local_data_still_checks_the_model_id(closed_endpoint, tmp_path, capsys):
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\na fine film\t1\n", encoding="utf-8")
    argv = [
        "--train_file",
        str(data),
        "--validation_file",
        str(data),
        "--output_dir",
        str(tmp_path / "out"),
        "--use_cpu",
        "true",
    ]
    assert run_recipe(argv, task="sst2") == 1
    err = capsys.readouterr().err
    assert "--model_name_or_path 'google/flan-t5-base' is a Hub model id" in err
    assert_offline_advice(err)


def test_offline_mode_fails_at_once_without_probing(monkeypatch, tmp_path, capsys, sleeps):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_access, "_probe", lambda *a: pytest.fail("probed the Hub in offline mode"))
    assert cli(["train", "--task", "samsum", "--output_dir", str(tmp_path), "--use_cpu", "true"]) == 1
    assert sleeps == []
    err = capsys.readouterr().err
    assert err.startswith("peft-hybrid train: error: ") and "HF_HUB_OFFLINE=1" in err
    assert_offline_advice(err)


def test_evaluate_with_a_hub_adapter_id_fails_fast(closed_endpoint, tmp_path, capsys, sleeps):
    assert cli(["evaluate", "--adapter", "someone/sst2-adapter", "--task", "sst2", "--out", str(tmp_path)]) == 1
    assert sleeps == []
    assert "adapter 'someone/sst2-adapter' is a Hub model id" in capsys.readouterr().err


def test_local_folders_and_cached_models_pass_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    require_hub("a folder", str(tmp_path))  # a local folder needs no Hub
    snapshot = tmp_path / "models--me--t5" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "models--me--t5" / "refs").mkdir()
    (tmp_path / "models--me--t5" / "refs" / "main").write_text("a" * 40, encoding="utf-8")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    require_hub("model 'me/t5'", "me/t5")
    with pytest.raises(HubUnreachableError, match="not in the local cache"):
        require_hub("model 'me/other'", "me/other")


def test_a_cached_adapter_repo_passes_offline(monkeypatch, tmp_path):
    """An adapter repo holds hybrid_config.json, not config.json: it is found in the cache all the same."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--me--adapter"
    (repo / "snapshots" / ("b" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("b" * 40) / "hybrid_config.json").write_text("{}", encoding="utf-8")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40, encoding="utf-8")
    require_hub("adapter 'me/adapter'", "me/adapter")
    require_hub("adapter 'me/adapter'", "me/adapter", revision="b" * 40)
    with pytest.raises(HubError, match="not in the local cache"):  # one hierarchy: HubError catches offline
        require_hub("adapter 'me/adapter'", "me/adapter", revision="c" * 40)


def test_a_reachable_endpoint_passes(hub_server, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub_access.hub_unreachable_reason() is None
    require_hub("model 'me/t5'", "me/t5")


# The recipe as a program, with every time.sleep it asks for written to SLEEPS_FILE at exit.
_SPY_SLEEPS = """
import atexit, json, os, runpy, sys, time
waits, real_sleep = [], time.sleep
time.sleep = lambda seconds: (waits.append(seconds), real_sleep(seconds))[1]
atexit.register(lambda: open(os.environ["SLEEPS_FILE"], "w").write(json.dumps(waits)))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_cli_subprocess_fails_fast_with_a_one_line_message(tmp_path):
    """The whole program, HF_HUB_OFFLINE=0 and a closed HF_ENDPOINT: no retries, no traceback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = tmp_path / "sleeps.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}", "SLEEPS_FILE": str(sleeps)}
    recipe = [str(REPO / "recipes" / "samsum.py"), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    done = subprocess.run(
        [sys.executable, "-c", _SPY_SLEEPS, *recipe],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # turns a hang into a failure; the assertions below are about retries, not speed
    )
    assert json.loads(sleeps.read_text(encoding="utf-8")) == []  # no retry, no backoff
    assert done.returncode == 1
    assert f"127.0.0.1:{port} unreachable" in done.stderr
    assert_offline_advice(done.stderr)
