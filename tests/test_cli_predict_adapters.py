"""``peft-hybrid predict`` with several named adapters: one mixed batch, outputs in input order."""

import json

import pytest
import torch

from helpers import tiny_model
from peft_hybrid.cli import main as cli


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory):
    """Two perturbed sst2 adapters of different modes on the same tiny base, saved with the tokenizer."""
    folders, models = {}, {}
    for seed, (name, mode) in enumerate((("pos", "hybrid"), ("neg", "lora"))):
        model, tokenizer = tiny_model(mode, seed=0, task="sst2", perturb=False)
        gen = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for t in model.adapter_tensors().values():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
        folders[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
        models[name] = model
    return folders, models, tokenizer


def _alone(model, tokenizer, text):
    with torch.no_grad():
        ids = model.generate(**tokenizer([text], return_tensors="pt"), max_new_tokens=5)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_predict_batches_across_adapters_in_input_order(two_adapters, tmp_path, capsys):
    folders, models, tokenizer = two_adapters
    texts = ["a charming journey", "bleak", "the plot holds up well", "dull and long", "fine"]
    names = ["pos", "neg", "neg", "pos", "neg"]
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps({"text": t, "adapter": n}) + "\n" for t, n in zip(texts, names)))
    argv = ["predict", "--adapter", f"pos={folders['pos']}", "--adapter", f"neg={folders['neg']}"]
    code = cli([*argv, "--input", str(source), "--batch-size", "8", "--max-new-tokens", "5", "--no-progress"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [_alone(models[n], tokenizer, t) for t, n in zip(texts, names)]


@pytest.mark.parametrize(
    "lines, message",
    [
        ('{"text": "ok", "adapter": "pos"}\n{"text": "no name"}\n', "input 2 names no adapter; with several"),
        ('{"text": "ok", "adapter": "qa"}\n', "input 1 asks for adapter 'qa'; the --adapter names are ['neg', 'pos']"),
        (None, "with several adapters, name each one"),
    ],
)
def test_predict_refuses_lines_without_or_with_unknown_adapters(two_adapters, tmp_path, capsys, lines, message):
    folders, _, _ = two_adapters
    source = tmp_path / "in.jsonl"
    source.write_text(lines or '{"text": "ok"}\n')
    first = f"pos={folders['pos']}" if lines else str(folders["pos"])
    assert cli(["predict", "--adapter", first, "--adapter", f"neg={folders['neg']}", "--input", str(source)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
