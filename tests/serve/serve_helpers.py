"""The real server in a child process, tiny adapters on ``preset:tiny``, and offline reference outputs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.modeling.loading import load_base
from peft_hybrid.serve.server import READY_MESSAGE

ADAPTERS = {
    # a SAMSum adapter: its task formats the input as in training and prediction
    "summ": HybridConfig(mode="hybrid", task="samsum", num_virtual_tokens=5, lora_dropout=0.0, lora_alpha=16),
    "lora": HybridConfig(mode="lora", r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q", "k", "v", "o"]),
    "prompt": HybridConfig(mode="prompt", num_virtual_tokens=7),
    # an SST-2 adapter: the task a grammar like "positive|negative" is for
    "sst2": HybridConfig(mode="lora", task="sst2", r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q", "v"]),
}
TEXTS = [
    "Amy: Hi Ben! Are you free tomorrow? Ben: Sure, after five.",
    "Sam: late.",
    "Tom: the train is cancelled again, I will take the bus and be there by nine",
    "Liz: did you feed the cat? Max: yes, twice",
]


def save_adapters(folder: Path, names=("summ", "lora", "prompt")) -> dict[str, Path]:
    """Each adapter (moved well off its initial values) saved as its own folder on the preset base."""
    paths = {}
    for seed, name in enumerate(names):
        base, tokenizer = load_base("preset:tiny")
        model = HybridModel(base, ADAPTERS[name], tokenizer=tokenizer, adapter_name=name)
        generator = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for tensor in model.adapter_tensors().values():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
        paths[name] = model.save_pretrained(folder / name)
    return paths


def offline(adapter: Path | None, texts: list[str], max_new_tokens: int) -> list[str]:
    """What ``peft-hybrid predict`` gives, one input at a time (``None``: the bare base)."""
    from peft_hybrid.inference import generate_texts, load_for_inference, model_inputs

    if adapter is None:
        base, tokenizer = load_base("preset:tiny")
        model = HybridModel(base, HybridConfig(mode="none"), tokenizer=tokenizer).eval()
        inputs = list(texts)
    else:
        model, tokenizer = load_for_inference(adapter, preset="tiny", device="cpu")
        inputs = model_inputs(model.hybrid_config, texts)
    return [generate_texts(model, tokenizer, [x], max_new_tokens=max_new_tokens, progress=False)[0] for x in inputs]


class ServeProcess:
    """``python -m peft_hybrid.serve ARGS --port 0`` in a child process; its output goes to ``log_path``."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    def start(self, timeout: float = 600.0) -> ServeProcess:  # a hang guard: start-up takes minutes on a busy machine
        cmd = [sys.executable, "-m", "peft_hybrid.serve", *self.args, "--port", "0", "--log-level", "info"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(re.escape(READY_MESSAGE) + r" (\S+)", self.log())
            if match:
                self.url = match.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code (the child is killed if it has not drained in ``timeout``)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(30)


def http(url: str, path: str, body=None, headers: dict | None = None, method: str | None = None):
    """``(status, headers with lower-case names, decoded JSON or text)`` of one request, without any proxy."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers=headers or {}, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=120) as response:
            status, head, raw = response.status, _lower(response.headers), response.read()
    except urllib.error.HTTPError as err:
        status, head, raw = err.code, _lower(err.headers), err.read()
    text = raw.decode()
    try:
        return status, head, json.loads(text)
    except json.JSONDecodeError:
        return status, head, text


def metric(url: str, name: str, headers: dict | None = None, **labels: str) -> float:
    """One sample of ``/metrics`` (0 when absent)."""
    _, _, text = http(url, "/metrics", headers=headers)
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        if sample == name and ",".join(sorted(label_text.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll the server's own state until ``condition()`` holds: the event a test waits on, not a time.

    ``timeout`` only turns a hang into a failure; it is far above any load's delay.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: still not so after {timeout:.0f} s"
        time.sleep(0.05)


@contextlib.contextmanager
def client_online():
    """The suite runs with HF_HUB_OFFLINE=1, which makes InferenceClient refuse even 127.0.0.1."""
    import pytest
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield


def _lower(headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def openapi_validator(name: str):
    """A JSON-schema validator for TGI's OpenAPI component ``name`` (``nullable`` read as "or null")."""
    import jsonschema

    spec = json.loads((Path(__file__).parent / "fixtures" / "tgi_openapi.json").read_text())

    def convert(node):
        if isinstance(node, dict):
            out = {k: convert(v) for k, v in node.items() if k not in ("nullable", "example", "discriminator")}
            if node.get("nullable"):
                out = {"anyOf": [out, {"type": "null"}]}
            return out
        if isinstance(node, list):
            return [convert(v) for v in node]
        return node

    root = {"components": convert(spec["components"]), "$ref": f"#/components/schemas/{name}"}
    return jsonschema.Draft7Validator(root)
