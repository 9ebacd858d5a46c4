"""``peft-hybrid serve --quantize``: the app, in-process, answers with the adapters on a quantized base."""

import argparse

import pytest

pytest.importorskip("bitsandbytes")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import TEXTS, save_adapters  # noqa: E402

from peft_hybrid.inference import generate_texts, load_for_inference, model_inputs  # noqa: E402
from peft_hybrid.modeling.quantization import QuantizationError, bnb_config  # noqa: E402
from peft_hybrid.serve.app import create_app  # noqa: E402
from peft_hybrid.serve.cli import add_arguments, check  # noqa: E402
from peft_hybrid.serve.server import build_state  # noqa: E402

NEW = 6


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = parser.parse_args(list(argv))
    check(options)
    return options


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return save_adapters(tmp_path_factory.mktemp("adapters"), names=("lora", "prompt"))


def _offline(adapter, quantize):
    model, tokenizer = load_for_inference(
        adapter, preset="tiny", device="cpu", quantization_config=bnb_config(quantize)
    )
    inputs = model_inputs(model.hybrid_config, TEXTS)
    return [generate_texts(model, tokenizer, [x], max_new_tokens=NEW, progress=False)[0] for x in inputs]


@pytest.mark.parametrize("quantize", ["bitsandbytes-nf4", "bitsandbytes"])
def test_served_answers_are_the_adapters_on_the_quantized_base(adapters, quantize):
    argv = ["--base", "preset:tiny", "--quantize", quantize, "--device", "cpu", "--max-wait-ms", "0"]
    argv += [f"--adapter={name}={path}" for name, path in adapters.items()]
    state = build_state(_options(*argv), None)
    want = {name: _offline(path, quantize) for name, path in adapters.items()}
    with TestClient(create_app(state)) as client:
        info = client.get("/info").json()
        assert info["quantize"] == quantize and info["model_dtype"] == "float32"
        for name in adapters:
            for text, expected in zip(TEXTS, want[name]):
                body = {"inputs": text, "parameters": {"adapter_id": name, "max_new_tokens": NEW}}
                response = client.post("/generate", json=body)
                assert response.status_code == 200, response.text
                assert response.json()["generated_text"] == expected, (name, text)


def test_8bit_serving_refuses_another_dtype():
    options = _options("--base", "preset:tiny", "--quantize", "bitsandbytes", "--dtype", "bfloat16")
    with pytest.raises(QuantizationError, match="--quantize bitsandbytes --dtype bfloat16"):
        build_state(options, None)


def test_4bit_serving_computes_in_the_dtype_given():
    options = _options("--base", "preset:tiny", "--quantize", "bitsandbytes-fp4", "--dtype", "bfloat16")
    state = build_state(options, None)
    assert state.cache.model.quantization == {
        "method": "bitsandbytes-fp4",
        "bits": 4,
        "double_quant": False,
        "compute_dtype": "bfloat16",
    }
