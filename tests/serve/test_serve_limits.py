"""API key, overload and lazily loaded adapters with LRU eviction, on one server started with all three."""

from __future__ import annotations

import concurrent.futures
import http.client as http_client
import json
import select
import socket
import threading
import urllib.parse

import pytest
from serve_helpers import TEXTS, ServeProcess, client_online, http, offline, save_adapters

pytestmark = pytest.mark.slow
KEY = "serve-test-key-5f2c"
AUTH = {"Authorization": f"Bearer {KEY}"}
NEW = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    paths = save_adapters(folder / "lazy", names=("summ", "lora", "prompt"))
    args = ["--base", "preset:tiny", "--adapter", f"summ={paths['summ']}", "--api-key-env", "SERVE_TEST_KEY"]
    args += ["--max-queue", "1", "--max-batch-size", "1", "--max-wait-ms", "0"]
    args += ["--lazy-adapters", "--allow-adapter", f"{folder}/lazy/*", "--max-adapters", "2"]
    server = ServeProcess(args, folder / "server.log", env={"SERVE_TEST_KEY": KEY}).start()
    refs = {name: offline(path, TEXTS[:2], NEW) for name, path in paths.items()}
    try:
        with client_online():
            yield server, paths, refs
    finally:
        server.stop()
        assert KEY not in server.log()  # nor in any log line


def _generate(server, adapter, text, new=NEW, headers=AUTH):
    body = {"inputs": text, "parameters": {"adapter_id": adapter, "max_new_tokens": new}}
    return http(server.url, "/generate", body, headers)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_every_route_but_health_needs_the_key(served, headers):
    server, _, _ = served
    for method, path in [("POST", "/"), ("POST", "/generate"), ("POST", "/generate_stream"), ("GET", "/info")]:
        body = {"inputs": "hi"} if method == "POST" else None
        status, _, answer = http(server.url, path, body, headers, method=method)
        assert status == 401 and answer["error_type"] == "authentication", path
        assert KEY not in str(answer)
    assert http(server.url, "/metrics", headers=headers)[0] == 401
    assert http(server.url, "/health", headers=headers)[0] == 200


def test_the_client_with_the_key_is_served(served):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import TextGenerationError

    server, _, refs = served
    client = InferenceClient(base_url=server.url, api_key=KEY)
    assert client.text_generation(TEXTS[0], adapter_id="summ", max_new_tokens=NEW) == refs["summ"][0]
    with pytest.raises(TextGenerationError, match="Unauthorized"):
        InferenceClient(base_url=server.url).text_generation(TEXTS[0], max_new_tokens=NEW)


def test_a_full_queue_answers_429_with_retry_after_and_the_rest_are_served(served):
    server, _, refs = served
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: _generate(server, "summ", TEXTS[1], new=48), range(12)))
    refused = [a for a in answers if a[0] == 429]  # TGI's status for an overloaded queue
    assert refused, "12 concurrent requests on a queue of 1 with batches of 1 should overflow"
    for _, headers, body in refused:
        assert headers["retry-after"] == "1" and body["error_type"] == "overloaded"
    served_ok = [a for a in answers if a[0] == 200]
    assert len(served_ok) + len(refused) == 12 and served_ok
    want = offline(served[1]["summ"], [TEXTS[1]], 48)[0]
    assert all(body["generated_text"] == want for _, _, body in served_ok)
    assert _generate(server, "summ", TEXTS[0])[2]["generated_text"] == refs["summ"][0]  # still serving


def test_lazy_adapters_load_on_first_use_and_the_least_recently_used_is_evicted(served):
    server, paths, refs = served

    def loaded():
        return {a["id"] for a in http(server.url, "/info", headers=AUTH)[2]["adapters"] if a["loaded"]}

    lora, prompt = str(paths["lora"]), str(paths["prompt"])
    assert _generate(server, lora, TEXTS[0])[2]["generated_text"] == refs["lora"][0]
    assert loaded() == {"summ", lora}
    assert _generate(server, prompt, TEXTS[1])[2]["generated_text"] == refs["prompt"][1]
    assert loaded() == {lora, prompt}  # summ was the least recently used
    assert _generate(server, "summ", TEXTS[1])[2]["generated_text"] == refs["summ"][1]  # loads again
    assert loaded() == {prompt, "summ"}


def test_lazy_ids_outside_the_patterns_or_broken_are_refused_naming_the_loaded(served, tmp_path):
    server, paths, refs = served
    status, _, answer = _generate(server, str(tmp_path / "elsewhere"), TEXTS[0])
    assert status == 422 and "Unknown adapter_id" in answer["error"] and "loaded adapters are [" in answer["error"]
    missing = str(paths["lora"].parent / "missing")
    status, _, answer = _generate(server, missing, TEXTS[0])
    assert status == 422 and f"adapter {missing!r} could not be loaded" in answer["error"]
    assert _generate(server, "summ", TEXTS[0])[2]["generated_text"] == refs["summ"][0]


def test_an_allow_pattern_matches_resolved_folders_only(served, tmp_path):
    """``DIR/*`` matches neither ``DIR/../outside/x`` nor a link in DIR to a folder outside it."""
    server, paths, refs = served
    lazy = paths["lora"].parent
    outside = lazy.parent / "outside"
    outside.mkdir(exist_ok=True)
    import shutil

    shutil.copytree(paths["lora"], outside / "x", dirs_exist_ok=True)
    (lazy / "link").symlink_to(outside / "x")
    for escape in [f"{lazy}/../outside/x", str(lazy / "link")]:
        status, _, answer = _generate(server, escape, TEXTS[0])
        assert status == 422 and "Unknown adapter_id" in answer["error"], escape
    info = http(server.url, "/info", headers=AUTH)[2]
    assert not any("outside" in a["id"] or "link" in a["id"] for a in info["adapters"])
    assert _generate(server, str(paths["lora"]), TEXTS[0])[2]["generated_text"] == refs["lora"][0]


def test_an_api_key_sent_in_the_query_never_reaches_the_log(served):
    server, _, _ = served
    status, _, _ = http(server.url, f"/info?api_key={KEY}&x=1", headers=AUTH)
    assert status == 200
    assert "/info?api_key=<redacted>&x=<redacted>" in server.log()
    assert KEY not in server.log()


def test_a_10_mb_body_gets_413_and_health_answers_while_it_streams_in(served):
    server, _, refs = served
    url = urllib.parse.urlparse(server.url)
    # announced in Content-Length: refused from the header, before a byte of the body is read
    conn = http_client.HTTPConnection(url.hostname, url.port, timeout=120)
    conn.putrequest("POST", "/generate")
    for name, value in {**AUTH, "Content-Type": "application/json", "Content-Length": str(10 * 2**20)}.items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "--max-request-bytes" in json.loads(response.read())["error"]
    conn.close()

    # streamed in chunks with no length: read up to the limit (1 MiB by default), then refused; the
    # sender stops once the answer is there, and /health answers while the body is still coming
    sock = socket.create_connection((url.hostname, url.port), timeout=120)
    head = f"POST /generate HTTP/1.1\r\nHost: {url.hostname}\r\nAuthorization: {AUTH['Authorization']}\r\n"
    sock.sendall(f"{head}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    chunk, started, sent = b'{"inputs": "' + b"x" * (2**16 - 12), threading.Event(), [0]

    def send_body() -> None:
        try:
            while sent[0] < 10 * 2**20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent[0] += len(chunk)
                started.set()
        except OSError:  # the server answered and closed first
            pass
        started.set()

    sender = threading.Thread(target=send_body)
    sender.start()
    assert started.wait(120)
    assert http(server.url, "/health")[0] == 200
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    sender.join(120)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert 2**20 <= sent[0] <= 10 * 2**20
    assert _generate(server, "summ", TEXTS[0])[2]["generated_text"] == refs["summ"][0]  # still serving
