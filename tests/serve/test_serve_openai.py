"""The OpenAI-compatible routes, spoken to with the real `openai` client (sync, async, streaming), LangChain
and `huggingface_hub.InferenceClient.chat_completion`: greedy answers equal ``/generate`` for that adapter."""

from __future__ import annotations

import asyncio

import pytest
from serve_helpers import TEXTS, ServeProcess, client_online, http, offline, save_adapters

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")
NEW = 12


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openai")
    paths = save_adapters(folder, names=("summ", "lora"))
    args = ["--base", "preset:tiny", *[a for n, p in paths.items() for a in ("--adapter", f"{n}={p}")]]
    args += ["--max-wait-ms", "20", "--max-new-tokens-limit", "64"]
    server = ServeProcess(args, folder / "server.log").start()
    refs = {name: offline(path, TEXTS, NEW) for name, path in paths.items()}
    refs[None] = offline(None, TEXTS, NEW)
    try:
        with client_online():
            yield server, refs
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_base_and_every_adapter(served, client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"preset:tiny", "summ", "lora"}
    assert models["lora"].owned_by == "peft-hybrid"


@pytest.mark.parametrize("model", ["summ", "lora", "preset:tiny"])
def test_a_greedy_completion_equals_generate_for_that_adapter(served, client, model):
    server, refs = served
    adapter = None if model == "preset:tiny" else model
    for text, want in zip(TEXTS, refs[adapter]):
        generated = http(
            server.url, "/generate", {"inputs": text, "parameters": {"adapter_id": adapter, "max_new_tokens": NEW}}
        )
        assert generated[2]["generated_text"] == want
        out = client.completions.create(model=model, prompt=text, max_tokens=NEW, temperature=0)
        assert out.choices[0].text == want
        assert out.usage.completion_tokens <= NEW and out.usage.prompt_tokens > 0
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
        assert out.choices[0].finish_reason in {"stop", "length"}


def test_a_list_of_prompts_and_n_choices(served, client):
    _, refs = served
    out = client.completions.create(model="lora", prompt=TEXTS[:3], max_tokens=NEW, temperature=0, n=2)
    assert [c.index for c in out.choices] == list(range(6))
    assert [c.text for c in out.choices] == [t for t in refs["lora"][:3] for _ in range(2)]


def test_a_streamed_completion_joins_to_the_whole_and_ends_with_done(served, client):
    _, refs = served
    chunks = list(
        client.completions.create(
            model="summ",
            prompt=TEXTS[0],
            max_tokens=NEW,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == refs["summ"][0]
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in {"stop", "length"}
    server = served[0]
    status, headers, raw = http(server.url, "/v1/completions", {"model": "summ", "prompt": TEXTS[0], "stream": True})
    assert status == 200 and raw.rstrip().endswith("data: [DONE]")
    assert headers["x-accel-buffering"] == "no"


def test_a_stop_sequence_ends_the_choice_and_is_left_out(served, client):
    _, refs = served
    want = refs["summ"][2]
    stop = want.split()[1]
    whole = client.completions.create(model="summ", prompt=TEXTS[2], max_tokens=NEW, temperature=0, stop=stop)
    cut = want[: want.index(stop)]
    assert whole.choices[0].text == cut and whole.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="summ", prompt=TEXTS[2], max_tokens=NEW, temperature=0, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_chat_maps_the_one_user_message_to_the_task_input(served, client):
    _, refs = served
    out = client.chat.completions.create(
        model="summ", messages=[{"role": "user", "content": TEXTS[1]}], max_tokens=NEW, temperature=0
    )
    assert out.choices[0].message.content == refs["summ"][1] and out.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="summ",
        messages=[{"role": "user", "content": [{"type": "text", "text": TEXTS[1]}]}],
        max_tokens=NEW,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == refs["summ"][1]


def test_chat_that_cannot_be_mapped_is_a_400_saying_why(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="exactly one message with role 'user'"):
        client.chat.completions.create(model="summ", messages=messages)
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(
            model="summ",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f"}}],
        )


def test_an_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nope", prompt="hi")
    assert err.value.code == "model_not_found" and "served models are" in err.value.message


def test_bad_fields_are_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="lora", prompt="hi", temperature=3)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="lora", prompt="hi", logprobs=2)
    with pytest.raises(openai.BadRequestError, match="max_new_tokens"):
        client.completions.create(model="lora", prompt="hi", max_tokens=65)


def test_seeded_sampling_repeats(client):
    kwargs = {"model": "lora", "prompt": TEXTS[0], "max_tokens": NEW, "temperature": 1.5, "seed": 3, "n": 2}
    first, again = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]


def test_the_async_client_with_concurrent_mixed_requests(served):
    _, refs = served

    async def main():
        client = openai.AsyncOpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0)
        calls = [(name, i) for name in ("summ", "lora") for i in range(len(TEXTS))]
        outs = await asyncio.gather(
            *(client.completions.create(model=n, prompt=TEXTS[i], max_tokens=NEW, temperature=0) for n, i in calls)
        )
        await client.close()
        return [(calls[k], out.choices[0].text) for k, out in enumerate(outs)]

    for (name, i), text in asyncio.run(main()):
        assert text == refs[name][i]


def test_huggingface_hub_chat_completion(served):
    from huggingface_hub import InferenceClient

    server, refs = served
    client = InferenceClient(base_url=server.url)
    out = client.chat_completion([{"role": "user", "content": TEXTS[3]}], model="lora", max_tokens=NEW, temperature=0)
    assert out.choices[0].message.content == refs["lora"][3]
    base = client.chat_completion(
        [{"role": "user", "content": TEXTS[3]}], max_tokens=NEW, temperature=0
    )  # model "dummy"
    assert base.choices[0].message.content == refs[None][3]
    streamed = client.chat_completion(
        [{"role": "user", "content": TEXTS[3]}], model="lora", max_tokens=NEW, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == refs["lora"][3]


def test_langchain_chat_openai_and_openai(served):
    langchain_openai = pytest.importorskip("langchain_openai")
    server, refs = served
    chat = langchain_openai.ChatOpenAI(
        base_url=server.url + "/v1", api_key="unused", model="summ", temperature=0, max_tokens=NEW, max_retries=0
    )
    assert chat.invoke(TEXTS[0]).content == refs["summ"][0]
    llm = langchain_openai.OpenAI(
        base_url=server.url + "/v1", api_key="unused", model="lora", temperature=0, max_tokens=NEW, max_retries=0
    )
    assert llm.invoke(TEXTS[1]) == refs["lora"][1]
