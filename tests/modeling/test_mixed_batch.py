"""Mixed-task batches: every row of one batch gives what that row gives alone with its adapter."""

import copy

import pytest
import torch

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset

# Four kinds of row: prompt only (10 tokens), LoRA only (r=2), hybrid (r=4, 30 tokens), the bare base.
CONFIGS = {
    "prompt10": HybridConfig(mode="prompt", num_virtual_tokens=10, seed=1),
    "lora2": HybridConfig(mode="lora", r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q", "k", "v", "o"]),
    "hybrid4": HybridConfig(mode="hybrid", r=4, lora_alpha=16, num_virtual_tokens=30, lora_dropout=0.0, seed=2),
}
NAMES = ["hybrid4", "__base__", "prompt10", "lora2", "lora2", "hybrid4", "prompt10", "__base__"]
TEXTS = [
    "Amy: Hi Ben! Are you free tomorrow? Ben: Sure, after five.",
    "Sam: late.",
    "Tom: the train is cancelled again, I will take the bus and be there by nine",
    "Ann: ok",
    "Liz: did you feed the cat? Max: yes, twice",
    "Joe: meeting moved to Monday",
    "Kim: can you send me the slides from the talk yesterday please?",
    "Bob: thanks!",
]


def _randomize(tensors, seed):
    # Far enough from the base to change every output (checked below); larger weights only blow up
    # float reduction-order noise between batch shapes, which the same-adapter batch shows too.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors.values():
            t.copy_(torch.randn(t.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The mixed model, and for each adapter an independent single-adapter model loaded from disk."""
    base, tok = t5_from_preset("tiny", seed=0)
    plain = copy.deepcopy(base).eval()
    model = HybridModel(base, CONFIGS["hybrid4"], tokenizer=tok, adapter_name="hybrid4")
    for name in ("prompt10", "lora2"):
        model.add_adapter(name, CONFIGS[name])
    alone = {"__base__": plain}
    for seed, name in enumerate(CONFIGS):
        _randomize(model.adapter_tensors(name), seed + 10)
        folder = tmp_path_factory.mktemp(name)
        model.set_adapter(name)
        model.save_pretrained(folder)
        alone[name] = HybridModel.from_pretrained(folder, copy.deepcopy(plain)).eval()
    model.set_adapter("hybrid4")
    return model.eval(), alone, tok


def _rows(tok):
    return [tok([text], return_tensors="pt") for text in TEXTS]


def _check_rows(mixed, solos, pad_id):
    for row, (got, want) in enumerate(zip(mixed, solos)):
        want = want[0]
        assert torch.equal(got[: len(want)], want), f"row {row} ({NAMES[row]})"
        assert (got[len(want) :] == pad_id).all(), f"row {row} ({NAMES[row]}) runs on past its solo output"


@pytest.mark.parametrize("settings", [{"num_beams": 1}, {"num_beams": 3}], ids=["greedy", "beam3"])
def test_mixed_generation_equals_each_row_alone(models, settings):
    model, alone, tok = models
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    mixed = model.generate(**batch, adapter_names=NAMES, max_new_tokens=12, **settings)
    solos = [alone[name].generate(**row, max_new_tokens=12, **settings) for name, row in zip(NAMES, _rows(tok))]
    _check_rows(mixed, solos, tok.pad_token_id)


def test_num_return_sequences_repeats_each_rows_adapter(models):
    model, alone, tok = models
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    settings = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 8}
    mixed = model.generate(**batch, adapter_names=NAMES, **settings).view(len(TEXTS), 2, -1)
    for row, (name, inputs) in enumerate(zip(NAMES, _rows(tok))):
        solo = alone[name].generate(**inputs, **settings)
        for k in range(2):
            want = solo[k][solo[k] != tok.pad_token_id]
            got = mixed[row, k]
            assert torch.equal(got[got != tok.pad_token_id], want), f"row {row} sequence {k}"


def test_mixed_forward_logits_match_each_row_alone(models):
    model, alone, tok = models
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    targets = [t.split(":")[0] + " says something" + " more" * i for i, t in enumerate(TEXTS)]
    labels = tok(targets, return_tensors="pt", padding=True).input_ids
    labels[labels == tok.pad_token_id] = -100
    logits = model(**batch, labels=labels, adapter_names=NAMES).logits
    for row, (name, inputs) in enumerate(zip(NAMES, _rows(tok))):
        own = labels[row : row + 1, : int((labels[row] != -100).sum())]
        want = alone[name](**inputs, labels=own).logits[0]
        torch.testing.assert_close(logits[row, : own.shape[1]], want, atol=1e-5, rtol=0)
        if name != "__base__":  # the adapter really moved this row away from the bare base
            base_logits = alone["__base__"](**inputs, labels=own).logits[0]
            assert (want - base_logits).abs().max() > 0.05, name


def test_left_padded_input_gives_the_same_rows(models):
    """Each row's real tokens are moved right after its prompt, wherever the caller's padding was."""
    model, _, tok = models
    right = tok(TEXTS, return_tensors="pt", padding=True)
    tok.padding_side = "left"
    try:
        left = tok(TEXTS, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "right"
    assert not torch.equal(left.input_ids, right.input_ids)
    a = model.generate(**right, adapter_names=NAMES, max_new_tokens=8)
    b = model.generate(**left, adapter_names=NAMES, max_new_tokens=8)
    assert torch.equal(a, b)


def test_one_adapter_for_every_row_is_that_adapter_merged(models):
    model, alone, tok = models
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    for name in ("lora2", "__base__"):
        got = model.generate(**batch, adapter_names=[name] * len(TEXTS), max_new_tokens=8)
        want = alone[name].generate(**batch, max_new_tokens=8)
        assert torch.equal(got, want), name
    assert model.active_adapter == "hybrid4"


def test_one_adapter_for_every_row_runs_merged_and_a_mix_runs_per_row(models):
    """The fast path: a uniform batch generates through plain Linears (no LoRA layer is called);
    a mixed one calls every LoRA layer, and neither leaves anything behind."""
    from peft.tuners.lora import LoraLayer

    model, _, tok = models
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    active = [list(layer.active_adapters) for layer in layers]
    calls = []
    hooks = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in layers]
    try:
        batch = tok(TEXTS, return_tensors="pt", padding=True)
        model.generate(**batch, adapter_names=["hybrid4"] * len(TEXTS), max_new_tokens=3)
        assert calls == []
        model.generate(**batch, adapter_names=NAMES, max_new_tokens=3)
        assert len(calls) > len(layers)
    finally:
        for hook in hooks:
            hook.remove()
    assert [list(layer.active_adapters) for layer in layers] == active
    assert all(not layer._forward_hooks for layer in layers)


def test_high_rank_adapters_take_the_gathered_path_and_still_match():
    """Adapters whose ranks add up past half a layer's width use per-row bmm instead of the
    side-by-side matmul; the rows still equal each row alone."""
    from peft_hybrid.modeling.mixed import RowLora

    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(mode="lora", r=16, lora_dropout=0.0), tokenizer=tok, adapter_name="x")
    for name in ("y", "z"):
        model.add_adapter(name, HybridConfig(mode="hybrid", r=16, num_virtual_tokens=3, lora_dropout=0.0))
    _randomize({str(i): t for i, t in enumerate(model.all_adapter_tensors())}, 3)
    model.eval()
    names = ["x", "y", "z", "__base__"]
    layer = model.base_model.encoder.block[0].layer[0].SelfAttention.q
    parts = {name: model._adapters[name].lora for name in model.adapters}
    assert RowLora(model.base_model, names, parts)._gather(layer, 1, torch.device("cpu")).mask is None  # bmm path
    _generate_mixed_and_alone(model, tok, names)


def test_the_gathered_path_pads_smaller_ranks_and_carries_dora_magnitudes():
    """Per-row bmm with ranks 16, 12 and a DoRA adapter of rank 8 (padded to 16): each row as alone."""
    from peft_hybrid.modeling.mixed import RowLora

    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(mode="lora", r=16, lora_dropout=0.0), tokenizer=tok, adapter_name="x")
    model.add_adapter("y", HybridConfig(mode="hybrid", r=12, num_virtual_tokens=3, lora_dropout=0.0))
    model.add_adapter("d", HybridConfig(mode="lora", r=8, use_dora=True, lora_dropout=0.0))
    _randomize({str(i): t for i, t in enumerate(model.all_adapter_tensors())}, 6)
    model.eval()
    names = ["d", "x", "__base__", "y", "d"]
    layer = model.base_model.encoder.block[0].layer[0].SelfAttention.q
    parts = {name: model._adapters[name].lora for name in model.adapters}
    plan = RowLora(model.base_model, names, parts)._gather(layer, 1, torch.device("cpu"))
    assert plan.mask is None and plan.a is None and plan.row_a.shape == (5, 64, 16)
    assert plan.magnitude.shape[:2] == (5, 1)
    assert not plan.row_a[2].any() and not plan.row_a[0, :, 8:].any()  # the base row adds nothing; d's rank ends at 8
    _generate_mixed_and_alone(model, tok, names)


def test_train_mode_mixed_forward_gives_every_rows_adapter_its_own_gradient():
    """A train-mode mixed batch backpropagates into each row's LoRA and prompt exactly as each row alone."""
    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, CONFIGS["hybrid4"], tokenizer=tok, adapter_name="hybrid4")
    model.add_adapter("lora2", CONFIGS["lora2"])
    model.add_adapter("dora", HybridConfig(mode="lora", use_dora=True, r=2, lora_dropout=0.0))
    for seed, name in enumerate(model.adapters):
        _randomize(model.adapter_tensors(name), seed + 30)
    model.train()
    for module in model.modules():  # the base's own dropout would make the two passes differ
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):  # T5's attention-weight dropout
            module.dropout = 0.0
    tensors = model.all_adapter_tensors()
    for t in tensors:  # every adapter trains here, to see each one's gradient
        t.requires_grad_(True)
    names = ["hybrid4", "lora2", "dora", "hybrid4"]
    texts = TEXTS[:4]
    labels = tok([t[:12] for t in texts], return_tensors="pt", padding=True).input_ids
    weights = torch.randn(4, labels.shape[1], model.config.vocab_size, generator=torch.Generator().manual_seed(0))

    logits = model(**tok(texts, return_tensors="pt", padding=True), labels=labels, adapter_names=names).logits
    mixed = torch.autograd.grad((logits * weights).sum(), tensors, allow_unused=True)
    alone = [torch.zeros_like(t) for t in tensors]
    for row, (name, text) in enumerate(zip(names, texts)):
        out = model(**tok([text], return_tensors="pt"), labels=labels[row : row + 1], adapter_names=[name]).logits
        for total, grad in zip(alone, torch.autograd.grad((out * weights[row]).sum(), tensors, allow_unused=True)):
            if grad is not None:
                total.add_(grad)
    for got, want in zip(mixed, alone):
        assert got is not None and want.abs().max() > 0
        # Padding changes the order of fp32 sums, so the tolerance follows the gradient's size: a wrong
        # row's or a missing gradient is off by the whole magnitude.
        torch.testing.assert_close(got, want, atol=1e-3 * want.abs().max().item(), rtol=1e-3)
    assert len(tensors) == 24 + 1 + 48 + 36  # every LoRA matrix, DoRA magnitude and the prompt got a gradient


def test_bf16_mixed_rows_are_bit_identical_to_the_same_rows_batched_with_one_adapter():
    """bf16 on a tiny model with fixed seeds: each mixed-batch row gives, bit for bit, the logits and
    tokens it gives in a batch of the same rows where every row uses its adapter. The per-row LoRA
    (and DoRA) rounds in the single-adapter layer's order, and a uniform half-precision batch is not
    merged; so in bf16 a mixed row differs from the row alone exactly as plain batching makes it differ."""
    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(mode="lora", r=2, lora_alpha=3, lora_dropout=0.0), adapter_name="a")
    model.add_adapter("b", CONFIGS["lora2"])
    model.add_adapter("d", HybridConfig(mode="lora", r=2, lora_alpha=3, lora_dropout=0.0, use_dora=True))
    model.add_adapter("h", HybridConfig(mode="hybrid", r=4, lora_alpha=6, lora_dropout=0.0, num_virtual_tokens=4))
    for seed, name in enumerate(model.adapters):
        _randomize(model.adapter_tensors(name), seed + 40)
    model = model.to(torch.bfloat16).eval()
    names = ["a", "b", "d", "h", "a", "d", "b", "h"]
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    labels = tok([t[:15] for t in TEXTS], return_tensors="pt", padding=True).input_ids
    mixed_logits = model(**batch, labels=labels, adapter_names=names).logits
    mixed_tokens = model.generate(**batch, adapter_names=names, max_new_tokens=10)
    for name in sorted(set(names)):
        logits = model(**batch, labels=labels, adapter_names=[name] * len(names)).logits
        tokens = model.generate(**batch, adapter_names=[name] * len(names), max_new_tokens=10)
        for row in (i for i, n in enumerate(names) if n == name):
            assert torch.equal(mixed_logits[row], logits[row]), f"row {row} ({name}) logits"
            width = min(tokens.shape[1], mixed_tokens.shape[1])
            assert torch.equal(mixed_tokens[row, :width], tokens[row, :width]), f"row {row} ({name}) tokens"


def test_only_named_gathers_just_the_batchs_adapters_with_the_same_outputs():
    """A server holding many adapters gathers only those its batch names (``only_named``)."""
    from peft_hybrid.modeling.mixed import RowLora, mixed_plan

    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(mode="lora", lora_dropout=0.0), tokenizer=tok, adapter_name="x")
    for name in ("y", "z"):
        model.add_adapter(name, HybridConfig(mode="lora", lora_dropout=0.0))
    _randomize({str(i): t for i, t in enumerate(model.all_adapter_tensors())}, 4)
    model.eval()
    names = ["x", "__base__", "x"]
    parts = {name: model._adapters[name].lora for name in model.adapters}
    assert RowLora(model.base_model, names, parts).used == ["x", "y", "z"]
    assert RowLora(model.base_model, names, parts, only_named=True).used == ["x"]
    batch = tok(TEXTS[:3], return_tensors="pt", padding=True)
    labels = tok(TEXTS[3:6], return_tensors="pt", padding=True)["input_ids"]
    logits = []
    for only_named in (False, True):
        with torch.no_grad(), mixed_plan(model, names, only_named=only_named):
            logits.append(model.base_model(**batch, labels=labels).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-5)


def test_a_mixed_call_asks_only_the_batchs_adapters_for_their_layers(monkeypatch):
    """With ``only_named``, a call's per-row LoRA reads the adapters its rows name and no other,
    so its cost does not grow with the adapters loaded beside them."""
    from peft_hybrid.modeling.adapters import _Adapter
    from peft_hybrid.modeling.lora import lora_layers
    from peft_hybrid.modeling.mixed import mixed_plan
    from peft_hybrid.modeling.parts.lora import LoraPart

    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(mode="none"), tokenizer=tok)
    for i in range(8):
        model.add_adapter(f"a{i}", HybridConfig(mode="hybrid", num_virtual_tokens=2, lora_dropout=0.0))
    _randomize({str(i): t for i, t in enumerate(model.all_adapter_tensors())}, 5)
    model.eval()
    asked, read = [], set()
    row_layer = LoraPart.row_layer
    monkeypatch.setattr(LoraPart, "row_layer", lambda p, layer: (asked.append(p.name), row_layer(p, layer))[1])
    by_id = {id(adapter): name for name, adapter in model._adapters.items()}
    lora = _Adapter.lora
    monkeypatch.setattr(_Adapter, "lora", property(lambda self: (read.add(by_id[id(self)]), lora.fget(self))[1]))
    names = ["a3", "__base__", "a6", "a3"]
    batch = tok(TEXTS[:4], return_tensors="pt", padding=True)
    labels = tok(TEXTS[4:8], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad(), mixed_plan(model, names, only_named=True):
        model.base_model(**batch, labels=labels)
    layers = len(lora_layers(model.base_model))
    assert sorted(asked) == ["a3"] * layers + ["a6"] * layers  # once per layer and adapter of the batch
    assert read == {"a3", "a6"}


def test_few_adapters_go_side_by_side_for_a_decoder_step_and_per_row_for_a_whole_input(monkeypatch):
    """Side by side costs every adapter's columns per token: a one-token step takes it, a long input the bmm."""
    from peft_hybrid.modeling.mixed import RowLora

    base, tok = t5_from_preset("tiny", seed=0)
    model = HybridModel(base, HybridConfig(mode="lora", r=4, lora_dropout=0.0), tokenizer=tok, adapter_name="x")
    model.add_adapter("y", HybridConfig(mode="lora", r=4, lora_dropout=0.0))
    _randomize({str(i): t for i, t in enumerate(model.all_adapter_tensors())}, 7)
    model.eval()
    names = ["y", "x", "__base__"]
    layer = model.base_model.encoder.block[0].layer[0].SelfAttention.q
    lora = RowLora(model.base_model, names, {n: model._adapters[n].lora for n in model.adapters})
    plan = lora._gather(layer, 1, torch.device("cpu"))
    assert plan.a.shape == (64, 8) and plan.mask.shape == (3, 1, 8)  # total rank 8 <= 64 // 2
    bmm_calls = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: (bmm_calls.append(a[0].shape), bmm(*a))[1])
    lora._gathered[(id(layer), 1)] = plan
    for tokens, per_row in ((1, False), (4, False), (5, True), (30, True)):
        x = torch.randn(3, tokens, 64, generator=torch.Generator().manual_seed(tokens))
        with torch.no_grad():
            delta = lora._hook(layer, (x,), torch.zeros(3, tokens, 64))
            alone = [x[i] @ plan.row_a[i] @ plan.row_b[i] * plan.scale[i] for i in range(3)]
        torch.testing.assert_close(delta, torch.stack(alone), rtol=1e-5, atol=1e-6)
        assert bool(bmm_calls) == per_row, tokens  # 4 tokens x 8 columns = 32 <= 32 side by side; 5 not
        bmm_calls.clear()
    # told every call feeds one token per row (a decoder step), the plan holds only the side-by-side path
    one = RowLora(model.base_model, names, {n: model._adapters[n].lora for n in model.adapters}, tokens=1)
    plan = one._gather(layer, 1, torch.device("cpu"))
    assert plan.row_a is None and plan.row_b is None and plan.a.shape == (64, 8)
    one._gathered[(id(layer), 1)] = plan
    with pytest.raises(RuntimeError, match="saw 5 tokens per row, prepared for 1"):
        one._hook(layer, (torch.zeros(3, 5, 64),), torch.zeros(3, 5, 64))


def _generate_mixed_and_alone(model, tok, names: list[str]) -> None:
    """One mixed batch, one row per adapter name, gives each row's tokens as generated alone."""
    texts = TEXTS[: len(names)]
    batch = tok(texts, return_tensors="pt", padding=True)
    mixed = model.generate(**batch, adapter_names=names, max_new_tokens=8)
    solos = [
        model.generate(**tok(t, return_tensors="pt"), adapter_names=[n], max_new_tokens=8)
        for t, n in zip(texts, names)
    ]
    _check_rows(mixed, solos, tok.pad_token_id)
