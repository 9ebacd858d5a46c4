"""Integrated Gradients attribution: completeness, determinism, a planted signal, heatmaps, CLI."""

import json
import sys

import pytest
import torch

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.interpret.attribution import AttributionResult, attribute
from peft_hybrid.interpret.heatmap import (
    CARD_IMAGE,
    PROMPT_ROW,
    add_heatmap_to_card,
    num_pages,
    plot_heatmap,
    save_heatmaps,
)
from peft_hybrid.offline import t5_from_preset

pytest.importorskip("captum")
pytest.importorskip("matplotlib")

TEXT = "Amy: see you at 5? Bob: sure."
N_PROMPT = 8


def _hybrid(seed: int = 1):
    """Tiny hybrid model whose LoRA B matrices are random, so LoRA changes the outputs."""
    base, tokenizer = t5_from_preset("tiny")
    model = HybridModel(base, HybridConfig(mode="hybrid", num_virtual_tokens=N_PROMPT), tokenizer=tokenizer)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.adapter_tensors().items():
            if "lora_B" in key:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def hybrid():
    return _hybrid()


@pytest.fixture(scope="module")
def result(hybrid):
    model, tokenizer = hybrid
    return attribute(model, tokenizer, TEXT, n_steps=200, max_new_tokens=3, progress=False)


def test_completeness_within_one_percent_per_output_token(hybrid, result):
    gaps = [fx - fb for fx, fb in zip(result.log_probs, result.baseline_log_probs)]
    for t, (gap, delta) in enumerate(zip(gaps, result.deltas)):
        assert abs(gap) > 0.05, f"token {t}: the baseline barely changes the output, so the check would be vacuous"
        assert abs(delta) <= 0.01 * abs(gap), (t, delta, gap)
        assert float(result.scores[:, t].sum()) - gap == pytest.approx(delta, abs=1e-9)
    assert max(result.relative_errors) <= 0.01


def test_rows_columns_and_log_probs_match_the_model(hybrid, result):
    model, tokenizer = hybrid
    encoded = tokenizer(TEXT, return_tensors="pt")
    generated = model.generate(**encoded, max_new_tokens=3, do_sample=False, num_beams=1)
    assert result.output_ids == generated[0, 1:].tolist()
    assert result.input_tokens == [f"P{i}" for i in range(1, N_PROMPT + 1)] + tokenizer.convert_ids_to_tokens(
        encoded["input_ids"][0]
    )
    assert result.scores.shape == (N_PROMPT + encoded["input_ids"].shape[1], 3)
    assert result.num_prompt_tokens == N_PROMPT
    # f(x) is the model's own teacher-forced log-probability, prompt and LoRA included.
    with torch.no_grad():
        logits = model(**encoded, labels=torch.tensor([result.output_ids])).logits
    expected = torch.log_softmax(logits, -1)[0, torch.arange(3), result.output_ids]
    assert torch.allclose(torch.tensor(result.log_probs, dtype=torch.float64), expected.double(), atol=1e-5)
    # The learned prompt carries part of the attribution.
    assert all(0.0 < share < 1.0 for share in result.prompt_share)


def test_deterministic_and_leaves_the_model_as_it_was(hybrid):
    model, tokenizer = hybrid
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first = attribute(model, tokenizer, TEXT, n_steps=16, max_new_tokens=2, progress=False)
    second = attribute(model, tokenizer, TEXT, n_steps=16, max_new_tokens=2, progress=False)
    assert torch.equal(first.scores, second.scores)
    assert first.deltas == second.deltas
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_given_target_and_zero_baseline(hybrid):
    model, tokenizer = hybrid
    # From an all-zero input T5's RMS norm makes f jump next to 0: the gap is reported, with a warning.
    with pytest.warns(UserWarning, match="baseline='pad'"):
        res = attribute(model, tokenizer, TEXT, target="see you", baseline="zeros", n_steps=20, progress=False)
    assert res.output_ids == tokenizer(text_target="see you").input_ids
    assert res.baseline == "zeros" and res.metadata["target_given"]
    encoded = tokenizer(TEXT, return_tensors="pt")
    embeds = model.encoder_inputs(**encoded)["inputs_embeds"]
    with torch.no_grad():
        logits = model.base_model(
            inputs_embeds=torch.zeros_like(embeds),
            decoder_input_ids=model.base_model._shift_right(torch.tensor([res.output_ids])),
        ).logits
    expected = torch.log_softmax(logits, -1)[0, torch.arange(len(res.output_ids)), res.output_ids]
    assert torch.allclose(torch.tensor(res.baseline_log_probs, dtype=torch.float64), expected.double(), atol=1e-5)
    gaps = torch.tensor(res.log_probs, dtype=torch.float64) - torch.tensor(res.baseline_log_probs, dtype=torch.float64)
    assert torch.allclose(res.scores.sum(0) - gaps, torch.tensor(res.deltas, dtype=torch.float64), atol=1e-9)


def test_bad_arguments_name_the_argument(hybrid):
    model, tokenizer = hybrid
    with pytest.raises(ValueError, match="baseline='ones'"):
        attribute(model, tokenizer, TEXT, baseline="ones")
    with pytest.raises(ValueError, match="n_steps=0"):
        attribute(model, tokenizer, TEXT, n_steps=0)
    with pytest.raises(ValueError, match="text=''"):
        attribute(model, tokenizer, "")


def test_missing_extra_names_the_install_command(hybrid, monkeypatch):
    model, tokenizer = hybrid
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match=r"pip install peft-hybrid\[interpret\]"):
        attribute(model, tokenizer, TEXT)


NAMES = ["Amy", "Ben", "Carla", "Ella", "Maya", "Tara", "Kate", "Nico"]
FILLERS = ["the", "you", "to", "will", "can", "late", "wait", "time"]


def test_planted_signal_copied_token_gets_the_largest_attribution():
    """Train a tiny model to copy the one name among filler words; IG must point at the name."""
    torch.manual_seed(0)
    base, tokenizer = t5_from_preset("tiny")
    names = torch.tensor(tokenizer.convert_tokens_to_ids([f"\u2581{w}" for w in NAMES]))
    fillers = torch.tensor(tokenizer.convert_tokens_to_ids([f"\u2581{w}" for w in FILLERS]))
    model = HybridModel(base, HybridConfig(mode="full"))
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        inputs = fillers[torch.randint(len(fillers), (32, 6), generator=generator)]
        copied = names[torch.randint(len(names), (32,), generator=generator)]
        inputs[torch.arange(32), torch.randint(6, (32,), generator=generator)] = copied
        eos = torch.ones(32, 1, dtype=torch.long)
        loss = model(input_ids=torch.cat([inputs, eos], 1), labels=torch.cat([copied[:, None], eos], 1)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    text = "the will Kate to late wait"
    res = attribute(model, tokenizer, text, n_steps=50, max_new_tokens=4, progress=False)
    assert res.output_tokens[0] == "\u2581Kate", "the planted task was not learned"
    assert res.num_prompt_tokens == 0
    assert res.input_tokens[int(res.scores[:, 0].argmax())] == "\u2581Kate"
    assert not res.scores.requires_grad  # every base weight is trainable here
    assert [t.get_text() for t in res.plot().axes[0].get_yticklabels()] == "the will Kate to late wait </s>".split()
    assert max(res.relative_errors) <= 0.05


def test_heatmap_labels_aggregation_and_pages(result, tmp_path):
    fig = plot_heatmap(result)
    ax = fig.axes[0]
    rows = [label.get_text() for label in ax.get_yticklabels()]
    columns = [label.get_text() for label in ax.get_xticklabels()]
    assert len(rows) == len(result.input_tokens) and len(columns) == len(result.output_tokens)
    assert rows[:2] == ["P1", "P2"] and rows[N_PROMPT] == "Amy" and rows[-1] == "</s>"
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    image = ax.get_images()[0]
    assert image.norm.vmin == -image.norm.vmax  # diverging scale centred at 0

    aggregated = plot_heatmap(result, aggregate_prompt=True)
    rows = [label.get_text() for label in aggregated.axes[0].get_yticklabels()]
    assert rows[0] == PROMPT_ROW and len(rows) == len(result.input_tokens) - N_PROMPT + 1
    prompt_row = aggregated.axes[0].get_images()[0].get_array()[0]
    assert torch.allclose(torch.tensor(prompt_row.data), result.scores[:N_PROMPT].sum(0))

    max_rows = 7
    pages = num_pages(result, max_rows)
    paths = save_heatmaps(result, tmp_path / "heatmap.png", max_rows=max_rows)
    assert len(paths) == pages == -(-len(result.input_tokens) // max_rows) and paths[1].name == "heatmap-2.png"
    labels = [
        t.get_text()
        for p in range(pages)
        for t in plot_heatmap(result, max_rows=max_rows, page=p).axes[0].get_yticklabels()
    ]
    assert labels == [t.get_text() for t in ax.get_yticklabels()]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in paths)
    with pytest.raises(ValueError, match="page=99"):
        plot_heatmap(result, max_rows=max_rows, page=99)


def test_json_round_trip(result, tmp_path):
    path = result.to_json(tmp_path / "attribution.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["input_tokens"] == result.input_tokens and raw["output_tokens"] == result.output_tokens
    assert len(raw["scores"]) == len(result.input_tokens) and len(raw["scores"][0]) == len(result.output_tokens)
    loaded = AttributionResult.from_json(path)
    assert torch.equal(loaded.scores, result.scores)
    assert loaded.deltas == result.deltas and loaded.input_ids == result.input_ids


def test_add_heatmap_to_card_adds_one_section(hybrid, result, tmp_path):
    model, _ = hybrid
    folder = model.save_pretrained(tmp_path / "adapter")
    original = (folder / "README.md").read_text(encoding="utf-8")
    png = save_heatmaps(result, tmp_path / "out" / "heatmap.png")[0]
    add_heatmap_to_card(folder, png)
    readme = add_heatmap_to_card(folder, png, caption="Second run.")
    card = readme.read_text(encoding="utf-8")
    assert card.startswith(original.rstrip("\n"))
    assert card.count("## Integrated Gradients attribution") == 1 and "Second run." in card
    assert f"![Integrated Gradients heatmap]({CARD_IMAGE})" in card
    assert (folder / CARD_IMAGE).read_bytes() == png.read_bytes()
    HybridModel.from_pretrained(folder, base_model=t5_from_preset("tiny")[0])  # still a valid adapter folder
    with pytest.raises(FileNotFoundError, match="png_path"):
        add_heatmap_to_card(folder, tmp_path / "missing.png")


def test_cli_end_to_end(tmp_path, capsys):
    from peft_hybrid.cli import main as cli_main

    def main(argv):
        return cli_main(["attribute", *argv])

    model, tokenizer = _hybrid(seed=2)  # on the "preset:tiny" base, which the CLI rebuilds offline
    adapter = model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "out"
    argv = [
        "--adapter",
        str(adapter),
        "--text",
        "Bob: sure.",
        "--task",
        "samsum",
        "--max-new-tokens",
        "2",
        "--n-steps",
        "24",
    ]
    assert main(argv + ["--out", str(out), "--aggregate-prompt", "--add-to-card", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "completeness" in stdout and "soft prompt share" in stdout
    saved = AttributionResult.from_json(out / "attribution.json")
    assert saved.num_prompt_tokens == N_PROMPT and saved.n_steps == 24 and len(saved.output_tokens) == 2
    assert saved.text == "Bob: sure."  # PEFT modes get no hand-written task tag
    assert (out / "heatmap.png").is_file() and (adapter / CARD_IMAGE).is_file()
    assert "## Integrated Gradients attribution" in (adapter / "README.md").read_text(encoding="utf-8")
    # The same numbers as the Python API on the same model.
    direct = attribute(model, tokenizer, "Bob: sure.", n_steps=24, max_new_tokens=2, progress=False)
    assert torch.allclose(saved.scores, direct.scores, atol=1e-6)

    assert main(["--adapter", "someone/adapter", "--text", "hi", "--add-to-card"]) == 2
    assert "local adapter folder" in capsys.readouterr().err
    assert main(["--adapter", str(adapter), "--text", "hi", "--task", "nope", "--out", str(out)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_ids_beyond_the_vocabulary_get_readable_labels(hybrid):
    from peft_hybrid.interpret.attribution import _token_strings

    _, tokenizer = hybrid
    beyond = len(tokenizer) + 5  # FLAN-T5's embedding table has 28 rows more than its vocabulary
    assert _token_strings(tokenizer, [1, beyond]) == ["</s>", f"<id {beyond}>"]
