"""Adapters from private repos on the project's local Hub server: at startup and lazily; the token never shows."""

from __future__ import annotations

import secrets

import pytest
from serve_helpers import TEXTS, ServeProcess, client_online, http, offline, save_adapters

from peft_hybrid import HybridModel
from peft_hybrid.modeling.loading import load_base

pytestmark = pytest.mark.slow
NEW = 8


@pytest.fixture(scope="module")
def served(hub_server, tmp_path_factory):
    from huggingface_hub import constants

    folder = tmp_path_factory.mktemp("serve-hub")
    paths = save_adapters(folder / "local", names=("summ", "lora"))
    token = hub_server.token("alice")
    repos = {name: f"alice/serve-{name}-{secrets.token_hex(3)}" for name in paths}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        for name, path in paths.items():
            base, _ = load_base("preset:tiny")
            model = HybridModel.from_pretrained(path, base_model=base)
            model.push_to_hub(repos[name], private=True, token=token, endpoint=hub_server.url)
    env = hub_server.subprocess_env(token=token, HF_HOME=str(folder / "hf-home"))
    args = [
        "--base",
        "preset:tiny",
        "--adapter",
        f"summ={repos['summ']}",
        "--lazy-adapters",
        "--allow-adapter",
        "alice/*",
    ]
    server = ServeProcess(args, folder / "server.log", env=env).start()
    refs = {name: offline(path, TEXTS[:2], NEW) for name, path in paths.items()}
    try:
        with client_online():
            yield server, repos, refs, token
    finally:
        server.stop()
        assert token not in server.log()


def test_a_private_hub_adapter_named_at_startup_is_served(served):
    from huggingface_hub import InferenceClient

    server, _, refs, _ = served
    client = InferenceClient(base_url=server.url)
    assert client.text_generation(TEXTS[0], adapter_id="summ", max_new_tokens=NEW) == refs["summ"][0]


def test_a_private_hub_adapter_loads_on_first_request(served):
    server, repos, refs, token = served
    body = {"inputs": TEXTS[1], "parameters": {"adapter_id": repos["lora"], "max_new_tokens": NEW}}
    assert http(server.url, "/generate", body)[2] == {"generated_text": refs["lora"][1]}
    status, _, info = http(server.url, "/info")
    assert {a["id"] for a in info["adapters"] if a["loaded"]} == {"summ", repos["lora"]}
    assert token not in str(info)


def test_a_missing_repo_is_refused_without_the_token(served):
    server, _, _, token = served
    body = {"inputs": TEXTS[1], "parameters": {"adapter_id": "alice/no-such-adapter"}}
    status, _, answer = http(server.url, "/generate", body)
    assert status == 422 and "'alice/no-such-adapter' could not be loaded" in answer["error"]
    assert token not in str(answer)
