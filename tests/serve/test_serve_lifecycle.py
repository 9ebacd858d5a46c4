"""Startup fails fast with a clear message; SIGTERM drains the requests in flight and exits 0."""

from __future__ import annotations

import http.client as http_client
import json
import subprocess
import sys
import urllib.parse

import pytest
from serve_helpers import TEXTS, ServeProcess, offline, save_adapters, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return save_adapters(tmp_path_factory.mktemp("lifecycle"), names=("lora",))


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(adapters, tmp_path):
    server = ServeProcess(["--base", "preset:tiny", "--adapter", f"lora={adapters['lora']}"], tmp_path / "log").start()
    try:
        url = urllib.parse.urlparse(server.url)
        conn = http_client.HTTPConnection(url.hostname, url.port, timeout=60)
        body = {"inputs": TEXTS[2], "parameters": {"adapter_id": "lora", "max_new_tokens": 200}}
        conn.request("POST", "/generate_stream", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        events = [json.loads(response.readline()[5:])]  # in flight: its first token has arrived
        server.proc.send_signal(15)
        wait_until(lambda: _refused(url), "new connections refused while draining")
        for line in response:
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    want = offline(adapters["lora"], [TEXTS[2]], 200)[0]
    assert events[-1]["generated_text"] == want
    assert len(events) == events[-1]["index"] > 1
    assert "finishing the requests in flight" in server.log()


def _refused(url) -> bool:
    conn = http_client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.connect()
    except ConnectionRefusedError:
        return True
    finally:
        conn.close()
    return False


def test_a_missing_adapter_stops_the_process_before_it_serves(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "peft_hybrid.serve", "--base", "preset:tiny", "--adapter", f"x={tmp_path / 'none'}"],
        capture_output=True,
        text=True,
        timeout=120,  # turns a hang into a failure; how long start-up takes is the machine's business
    )
    assert done.returncode == 2 and "adapter 'x' could not be loaded" in done.stderr
    assert "ready at" not in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base", "preset:tiny", "--adapter", "x=/no/such/adapter"], "adapter 'x' could not be loaded"),
        (["--base", "/no/such/base"], "--base /no/such/base: the base model could not be loaded"),
        (["--base", "preset:tiny", "--adapter", "no-equals-sign"], "expected NAME=PATH_OR_REPO"),
        (["--base", "preset:tiny", "--adapter", "a=x", "--adapter", "a=y"], "--adapter 'a' is given twice"),
        (["--base", "preset:tiny", "--lazy-adapters"], "--lazy-adapters needs at least one --allow-adapter"),
        (["--base", "preset:tiny", "--port", "-1"], "--port -1: pass a port from 0 to 65535"),
        (["--base", "preset:tiny", "--host", "no such host!"], "--host no such host!: not an address"),
        (["--base", "preset:tiny", "--max-request-bytes", "0"], "--max-request-bytes 0: pass a positive number"),
        (["--base", "preset:tiny", "--max-batch-size", "0"], "--max-batch-size 0: pass a positive number"),
        (["--base", "preset:tiny", "--max-batch-total-tokens", "100"], "--max-batch-total-tokens 100 is less than"),
        (["--base", "preset:tiny", "--api-key-env", "SERVE_UNSET_KEY_VAR"], "SERVE_UNSET_KEY_VAR"),
        (["--base", "preset:tiny", "--scheduler", "static", "--fast"], "Drop --fast or use --scheduler continuous"),
    ],
)
def test_startup_fails_fast_naming_what_is_wrong(args, message, capsys):
    from peft_hybrid.cli import main

    assert main(["serve", "--port", "0", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_port_in_use_is_a_clear_error_before_the_model_loads(capsys):
    import socket

    from peft_hybrid.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--base", "/no/such/base", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: already in use" in err and "Traceback" not in err


def test_an_adapter_for_another_base_stops_startup(tmp_path, capsys):
    from peft_hybrid import HybridConfig, HybridModel
    from peft_hybrid.cli import main
    from peft_hybrid.offline import t5_from_preset

    base, tokenizer = t5_from_preset("flan-t5-small")
    HybridModel(base, HybridConfig(mode="lora"), tokenizer=tokenizer).save_pretrained(tmp_path / "small")
    assert main(["serve", "--base", "preset:tiny", "--port", "0", "--adapter", f"small={tmp_path / 'small'}"]) == 2
    err = capsys.readouterr().err
    assert "adapter 'small' could not be loaded" in err and "shape" in err
