"""The real server, spoken to with the real `huggingface_hub.InferenceClient`: answers equal offline generation."""

from __future__ import annotations

import concurrent.futures
import http.client as http_client
import json
import urllib.parse

import pytest
from serve_helpers import TEXTS, ServeProcess, client_online, http, metric, offline, save_adapters, wait_until

pytestmark = pytest.mark.slow
NEW = 12  # new tokens per request: short generations keep the module quick
LIMIT = 64  # the server's --max-new-tokens-limit
MAX_INPUT = 48  # the server's --max-input-tokens


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    paths = save_adapters(folder)
    args = ["--base", "preset:tiny", *[a for n, p in paths.items() for a in ("--adapter", f"{n}={p}")]]
    args += ["--max-wait-ms", "50", "--max-new-tokens-limit", str(LIMIT), "--max-input-tokens", str(MAX_INPUT)]
    server = ServeProcess(args, folder / "server.log").start()
    refs = {name: offline(path, TEXTS, NEW) for name, path in paths.items()}
    refs[None] = offline(None, TEXTS, NEW)
    try:
        with client_online():
            yield server, paths, refs
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(served):
    from huggingface_hub import InferenceClient

    return InferenceClient(base_url=served[0].url)


@pytest.mark.parametrize("adapter", ["summ", "lora", None], ids=["samsum-hybrid", "lora", "base"])
def test_plain_details_and_stream_equal_offline(served, client, adapter):
    _, _, refs = served
    for text, want in zip(TEXTS, refs[adapter]):
        assert client.text_generation(text, adapter_id=adapter, max_new_tokens=NEW) == want

        detailed = client.text_generation(text, adapter_id=adapter, max_new_tokens=NEW, details=True)
        assert detailed.generated_text == want
        tokens = detailed.details.tokens
        assert detailed.details.generated_tokens == len(tokens) <= NEW
        assert "".join(t.text for t in tokens) == want
        assert detailed.details.finish_reason == ("length" if len(tokens) == NEW else "eos_token")
        assert all(t.logprob <= 0 for t in tokens)

        assert "".join(client.text_generation(text, adapter_id=adapter, max_new_tokens=NEW, stream=True)) == want

        events = list(client.text_generation(text, adapter_id=adapter, max_new_tokens=NEW, stream=True, details=True))
        assert [e.token.id for e in events] == [t.id for t in tokens]  # one event per generated token
        assert [e.generated_text for e in events[:-1]] == [None] * (len(events) - 1)
        assert events[-1].generated_text == want
        assert events[-1].details.generated_tokens == len(tokens)


def test_adapters_really_differ(served):
    _, _, refs = served
    assert len({tuple(refs[name]) for name in refs}) == len(refs)


def test_generate_route_answers_an_object_and_the_compat_route_a_list(served):
    server, _, refs = served
    body = {"inputs": TEXTS[0], "parameters": {"adapter_id": "lora", "max_new_tokens": NEW}}
    assert http(server.url, "/generate", body)[2] == {"generated_text": refs["lora"][0]}
    assert http(server.url, "/", body)[2] == [{"generated_text": refs["lora"][0]}]


def test_32_concurrent_mixed_requests_all_correct_and_batched(served, tmp_path):
    """``--scheduler static`` with batches of 16 and a wait no load reaches: exactly two full batches.

    Each batch closes when its 16th request is queued (the wait is only a cap), so the count does not
    depend on how fast the 32 requests arrive; 8 requests per adapter means each batch mixes adapters.
    """
    from huggingface_hub import InferenceClient

    _, paths, refs = served
    args = ["--base", "preset:tiny", *[a for n, p in paths.items() for a in ("--adapter", f"{n}={p}")]]
    args += ["--scheduler", "static", "--max-batch-size", "16", "--max-wait-ms", "3600000"]
    args += ["--max-new-tokens-limit", str(LIMIT), "--max-input-tokens", str(MAX_INPUT)]
    server = ServeProcess(args, tmp_path / "server.log").start()
    try:
        client = InferenceClient(base_url=server.url)
        names = ["summ", "lora", None, "prompt"]
        calls = [(names[i % 4], TEXTS[(i // 4) % len(TEXTS)]) for i in range(32)]

        def call(i):
            adapter, text = calls[i]
            return client.text_generation(text, adapter_id=adapter, max_new_tokens=NEW)

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            got = list(pool.map(call, range(32)))
        for (adapter, text), answer in zip(calls, got):
            assert answer == refs[adapter][TEXTS.index(text)], (adapter, text)
        assert metric(server.url, "peft_hybrid_serve_batch_size_count") == 2
        assert metric(server.url, "peft_hybrid_serve_batch_size_sum") == 32
    finally:
        server.stop()


def test_stop_sequence_ends_the_row_with_it(served, client):
    _, _, refs = served
    want = refs["summ"][2]
    stop = want.split()[1]
    out = client.text_generation(TEXTS[2], adapter_id="summ", max_new_tokens=NEW, stop=[stop], details=True)
    assert out.details.finish_reason == "stop_sequence"
    assert out.generated_text.endswith(stop) and want.startswith(out.generated_text)
    assert len(out.generated_text) < len(want)


def test_seeded_sampling_repeats_and_reports_its_seed(served, client):
    kwargs = {"adapter_id": "lora", "max_new_tokens": NEW, "do_sample": True, "temperature": 1.5, "seed": 7}
    first = client.text_generation(TEXTS[0], details=True, **kwargs)
    again = client.text_generation(TEXTS[0], details=True, **kwargs)
    assert first.generated_text == again.generated_text
    assert first.details.seed == 7


BAD = [
    ({"parameters": {"max_new_tokens": 4}}, "`inputs` is missing"),
    ({"inputs": "   "}, "`inputs` cannot be empty"),
    ({"inputs": 5}, "`inputs`: Input should be a valid string"),
    (
        {"inputs": "hi", "parameters": {"max_new_tokens": 0}},
        "`parameters.max_new_tokens`: Input should be greater than 0",
    ),
    ({"inputs": "hi", "parameters": {"max_new_tokens": LIMIT + 1}}, f"`max_new_tokens` must be <= {LIMIT}"),
    ({"inputs": "word " * 80}, f"`inputs` must have at most {MAX_INPUT} tokens"),
    ({"inputs": "hi", "parameters": {"adapter_id": "nope"}}, "Unknown adapter_id 'nope': loaded adapters are"),
    (
        {"inputs": "hi", "parameters": {"temperature": -1}},
        "`parameters.temperature`: Input should be greater than or equal to 0.0001",
    ),
    ({"inputs": "hi", "parameters": {"best_of": 2}}, "`best_of` is not supported"),
    ({"inputs": "hi", "parameters": {"truncate": MAX_INPUT + 1}}, f"`truncate` must be <= {MAX_INPUT}"),
    (b"{not json", "not valid JSON"),
]


@pytest.mark.parametrize("route", ["/", "/generate", "/generate_stream"])
def test_every_bad_input_gets_422_naming_the_field_and_the_server_keeps_serving(served, route):
    server, _, refs = served
    for body, message in BAD:
        status, _, answer = http(server.url, route, body)
        assert status == 422, (body, answer)
        assert answer["error_type"] == "validation"
        assert message in answer["error"], (body, answer)
    _, _, answer = http(server.url, "/generate", {"inputs": "hi", "parameters": {"adapter_id": "nope"}})
    assert "['lora', 'prompt', 'summ']" in answer["error"]  # the error names the adapters loaded
    body = {"inputs": TEXTS[1], "parameters": {"adapter_id": "summ", "max_new_tokens": NEW}}
    assert http(server.url, "/generate", body)[2]["generated_text"] == refs["summ"][1]


def test_the_client_raises_tgis_validation_error(served, client):
    from huggingface_hub.errors import ValidationError

    with pytest.raises(ValidationError, match="max_new_tokens"):
        client.text_generation("hi", max_new_tokens=LIMIT + 1)


def test_truncate_keeps_the_last_tokens_as_tgi_does(served):
    server, paths, _ = served
    import torch

    from peft_hybrid.inference import load_for_inference
    from peft_hybrid.serve.formatting import decode_output

    long_text = TEXTS[2] * 6
    model, tokenizer = load_for_inference(paths["lora"], preset="tiny", device="cpu")
    kept = torch.tensor([tokenizer(long_text)["input_ids"][-20:]])
    with torch.no_grad():
        out = model.generate(input_ids=kept, attention_mask=torch.ones_like(kept), max_new_tokens=NEW, num_beams=1)
    body = {"inputs": long_text, "parameters": {"adapter_id": "lora", "max_new_tokens": NEW, "truncate": 20}}
    assert http(server.url, "/generate", body)[2]["generated_text"] == decode_output(tokenizer, out[0].tolist())


def test_info_health_and_metrics(served):
    server, _, _ = served
    status, _, info = http(server.url, "/info")
    assert status == 200 and info["model_id"] == "preset:tiny" and info["max_input_tokens"] == MAX_INPUT
    tasks = {a["id"]: (a["task"], a["mode"], a["loaded"]) for a in info["adapters"]}
    assert tasks == {
        "summ": ("samsum", "hybrid", True),
        "lora": (None, "lora", True),
        "prompt": (None, "prompt", True),
    }
    assert http(server.url, "/health")[0] == 200
    before = metric(server.url, "peft_hybrid_serve_requests_total", adapter="prompt", status="200")
    tokens = metric(server.url, "peft_hybrid_serve_generated_tokens_total", adapter="prompt")
    answer = http(
        server.url, "/generate", {"inputs": TEXTS[0], "parameters": {"adapter_id": "prompt", "details": True}}
    )
    assert metric(server.url, "peft_hybrid_serve_requests_total", adapter="prompt", status="200") == before + 1
    generated = answer[2]["details"]["generated_tokens"]
    # The worker counts the tokens after the answer is sent: wait for exactly this request's count.
    counted = tokens + generated
    wait_until(
        lambda: metric(server.url, "peft_hybrid_serve_generated_tokens_total", adapter="prompt") == counted,
        f"{generated} generated tokens counted",
    )
    assert metric(server.url, "peft_hybrid_serve_queue_depth") == 0


def test_a_client_leaving_mid_stream_frees_its_row(served):
    server, _, _ = served
    body = {"inputs": TEXTS[2], "parameters": {"adapter_id": "prompt", "max_new_tokens": LIMIT, "details": True}}

    def tokens() -> float:
        return metric(server.url, "peft_hybrid_serve_generated_tokens_total", adapter="prompt")

    def left() -> float:
        return metric(server.url, "peft_hybrid_serve_requests_total", adapter="prompt", status="499")

    start_tokens, start_left = tokens(), left()
    natural = http(server.url, "/generate", body)[2]["details"]["generated_tokens"]
    assert natural >= 32, "pick an input whose generation runs long"
    # The worker counts a row's tokens after its answer is sent: wait for this one's before going on.
    wait_until(lambda: tokens() == start_tokens + natural, "the uninterrupted request's tokens counted")
    url = urllib.parse.urlparse(server.url)
    conn = http_client.HTTPConnection(url.hostname, url.port, timeout=120)
    conn.request("POST", "/generate_stream", json.dumps(body), {"Content-Type": "application/json"})
    first = conn.getresponse().readline()
    assert first.startswith(b"data:") and json.loads(first[5:])["index"] == 1
    conn.sock.close()  # leave after the first token
    conn.close()
    # 499: the server saw the client leave while its row was still running, and marked the row to stop.
    wait_until(lambda: left() == start_left + 1, "the server noticing the client leaving")
    wait_until(lambda: tokens() > start_tokens + natural, "the left row ending and its tokens counted")
    generated = tokens() - start_tokens - natural
    assert 1 <= generated < natural  # it ended before its natural end


def test_return_full_text_puts_the_input_first(served, client):
    _, _, refs = served
    out = client.text_generation(TEXTS[1], adapter_id="lora", max_new_tokens=NEW, return_full_text=True)
    assert out == TEXTS[1] + refs["lora"][1]
