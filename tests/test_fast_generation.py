"""The fast generation path: static KV cache + compiled steps, bucketed shapes (tiny preset).

The compile is dynamo with ``backend="eager"`` (tracing only, seconds on a CPU) except in the one
inductor test marked slow: the tokens, graph counts and recompiles under test are dynamo's.
"""

import functools

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from helpers import SCALED_LORA, mixed_model, tiny_model
from peft_hybrid import HybridTrainer, HybridTrainingArguments, generate_texts
from peft_hybrid.inference import GenerationBuckets, fast_generation, merged_lora
from peft_hybrid.inference import fast as fast_decoding
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.training.data import Seq2SeqCollator
from peft_hybrid.training.speed import dynamo_counters

TEXTS = [
    "Amy: see you at 5?\nTom: sure, at the cafe",
    "Bob: running late, sorry",
    "Ann: hi",
    "Zed: what is up with the thing we talked about yesterday at lunch",
    "Kim: ok",
    "Lea: can you bring the charger?\nMax: yes",
    "Ned: the train is cancelled again",
]
fast_eager = functools.partial(fast_generation, backend="eager")


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _encode(tokenizer, texts):
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def _eager_and_fast(model, tokenizer, texts, **generation):
    batch = _encode(tokenizer, texts)
    eager = model.generate(**batch, **generation)
    with fast_eager(model):
        fast = model.generate(**batch, **generation)
    return eager, fast


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
def test_greedy_tokens_equal_eager(merged):
    model, tokenizer = tiny_model("hybrid", **SCALED_LORA)
    unmerged = model.generate(**_encode(tokenizer, TEXTS[:5]), max_new_tokens=12)
    with merged_lora(model) if merged else torch.no_grad():
        eager, fast = _eager_and_fast(model, tokenizer, TEXTS[:5], max_new_tokens=12)
    assert fast.shape == eager.shape and torch.equal(fast, eager) and torch.equal(eager, unmerged)
    assert dynamo_counters()["graph_breaks"] == 0


def test_beam_search_tokens_equal_eager():
    model, tokenizer = tiny_model("hybrid")
    generation = dict(max_new_tokens=10, num_beams=3, num_return_sequences=2)
    eager, fast = _eager_and_fast(model, tokenizer, TEXTS[:3], **generation)
    assert eager.shape[0] == 6 and torch.equal(fast, eager)


def test_rows_stopping_early_keep_the_eager_length():
    # Rows that end at different steps: the output must be as long as the eager one, not as long
    # as whatever the rows padded up to the bucket generated. A random tiny model hardly ever
    # emits EOS, so the tokens it does emit at chosen steps serve as the end tokens.
    model, tokenizer = tiny_model("hybrid")
    batch = _encode(tokenizer, TEXTS[:5])
    probe = model.generate(**batch, max_new_tokens=40)
    stops = sorted({int(probe[row, 3 + 4 * row]) for row in range(5)} - {tokenizer.pad_token_id})
    eager, fast = _eager_and_fast(model, tokenizer, TEXTS[:5], max_new_tokens=40, eos_token_id=stops)
    ends = torch.isin(eager[:, 1:], torch.tensor(stops)).int().argmax(dim=1)
    assert len(set(ends.tolist())) > 1 and eager.shape[1] < 41  # the rows really stop early, apart
    assert torch.equal(fast, eager)


def test_no_graph_breaks_and_no_recompiles_within_a_bucket():
    model, tokenizer = tiny_model("hybrid")
    five, seven = _encode(tokenizer, TEXTS[:5]), _encode(tokenizer, TEXTS)
    assert five["input_ids"].shape != seven["input_ids"].shape  # rows and source length differ...
    buckets = GenerationBuckets()
    assert buckets.batch(5) == buckets.batch(7) == 8  # ...inside one bucket
    with merged_lora(model):
        eager = [model.generate(**b, max_new_tokens=8) for b in (five, seven)]
        with fast_eager(model):
            first = model.generate(**five, max_new_tokens=8)
            after_first = dynamo_counters()
            second = model.generate(**seven, max_new_tokens=8)
            assert dynamo_counters() == after_first
        with fast_eager(model):  # a second block reuses the compiled graphs too
            again = model.generate(**seven, max_new_tokens=8)
    assert dynamo_counters() == after_first
    # Two graphs: the encoder and the decoder step (the prefill step runs eagerly).
    assert after_first["graphs"] == 2 and after_first["graph_breaks"] == 0
    assert torch.equal(first, eager[0]) and torch.equal(second, eager[1]) and torch.equal(again, eager[1])


def test_the_model_is_put_back_on_exit_even_after_an_error():
    model, tokenizer = tiny_model("hybrid")
    base = model.base_model
    modules = (base, base.get_encoder(), base.get_decoder())
    with pytest.raises(RuntimeError, match="boom"):
        with fast_eager(model) as inside:
            assert inside is model and "generate" in vars(model)
            model.generate(**_encode(tokenizer, TEXTS[:2]), max_new_tokens=3)
            raise RuntimeError("boom")
    assert "generate" not in vars(model)
    assert all("_compiled_call_impl" not in vars(m) for m in modules)
    assert "_previous_max_cache_length" not in vars(base)
    assert sum(isinstance(m, LoraLayer) for m in model.modules()) == 12


def test_calls_outside_generate_run_eagerly_inside_the_block():
    # The Trainer computes the eval loss with model(**batch) inside the same block.
    model, tokenizer = tiny_model("hybrid")
    batch = _encode(tokenizer, TEXTS[:2])
    labels = tokenizer(["a b", "c"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        eager = model(**batch, labels=labels).loss
        with fast_eager(model):
            inside = model(**batch, labels=labels).loss
    assert torch.equal(inside, eager)
    assert dynamo_counters()["frames"] == 0


def test_plain_base_and_stock_peft_hybrid_take_the_same_path():
    base, tokenizer = t5_from_preset("tiny")
    eager, fast = _eager_and_fast(base.eval(), tokenizer, TEXTS[:3], max_new_tokens=8)
    assert torch.equal(fast, eager)
    stock_base, _ = t5_from_preset("tiny")  # stock PEFT, hand-assembled: LoRA, then an encoder prompt
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["q", "v"]), stock_base)
    prompt = PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=30, num_transformer_submodules=1)
    stock = get_peft_model(stock_base, prompt).eval()
    eager, fast = _eager_and_fast(stock, tokenizer, TEXTS[:3], max_new_tokens=8)
    assert torch.equal(fast, eager)


def test_buckets_round_up_and_refuse_nonsense():
    b = GenerationBuckets(batch_sizes=(16, 4, 1), length_multiple=32, cache_multiple=16)
    assert b.batch_sizes == (1, 4, 16)
    assert [b.batch(n) for n in (1, 2, 4, 5, 16, 17, 40)] == [1, 4, 4, 16, 16, 32, 48]
    assert [b.source_length(n) for n in (0, 1, 32, 33)] == [32, 32, 32, 64]
    assert [b.cache_length(n) for n in (9, 16, 17)] == [16, 16, 32]
    with pytest.raises(ValueError, match="batch_sizes"):
        GenerationBuckets(batch_sizes=(0, 8))
    with pytest.raises(ValueError, match="length_multiple"):
        GenerationBuckets(length_multiple=0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"return_dict_in_generate": True}, "return_dict_in_generate"),
        ({"cache_implementation": "dynamic"}, "cache_implementation"),
        ({"decoder_input_ids": torch.zeros((2, 1), dtype=torch.long)}, "decoder_input_ids"),
        ({"attention_mask": None}, "attention_mask"),
        ({"adapter_names": ["a"]}, "adapter_names has 1 entries for 2 rows"),
    ],
)
def test_unsupported_generate_arguments_are_refused(extra, message):
    model, tokenizer = tiny_model("hybrid")
    batch = {**_encode(tokenizer, TEXTS[:2]), **extra}
    with fast_eager(model), pytest.raises(ValueError, match=message):
        model.generate(**batch, max_new_tokens=3)


def test_nesting_and_models_without_an_encoder_decoder_are_refused():
    model, _ = tiny_model("hybrid")
    with fast_eager(model), pytest.raises(RuntimeError, match="already"):
        with fast_eager(model):
            pass
    with pytest.raises(TypeError, match="seq2seq"):
        with fast_eager(torch.nn.Linear(2, 2)):
            pass


def test_generate_texts_fast_equals_eager(monkeypatch):
    model, tokenizer = tiny_model("hybrid")
    monkeypatch.setattr(fast_decoding, "fast_generation", fast_eager)
    expected = generate_texts(model, tokenizer, TEXTS, batch_size=4, max_new_tokens=10, progress=False)
    got = generate_texts(model, tokenizer, TEXTS, batch_size=4, max_new_tokens=10, progress=False, fast=True)
    assert got == expected and len(got) == len(TEXTS)
    assert dynamo_counters()["graphs"] == 2  # batches of 4 and 3 rows: one bucket
    assert "generate" not in vars(model)


def test_predict_fast_flag_prints_the_same_outputs(tmp_path, monkeypatch, capsys):
    from peft_hybrid.cli import main as cli

    model, tokenizer = tiny_model("hybrid", task="sst2")
    model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("".join(text.replace("\n", " ") + "\n" for text in TEXTS), encoding="utf-8")
    monkeypatch.setattr(fast_decoding, "fast_generation", fast_eager)
    printed = []
    for flag in ([], ["--fast"]):
        command = ["predict", "--adapter", str(tmp_path / "adapter"), "--input", str(inputs), "--batch-size", "4"]
        assert cli([*command, "--max-new-tokens", "6", "--no-progress", *flag]) == 0
        printed.append(capsys.readouterr().out.splitlines())
    assert printed[1] == printed[0] and len(printed[0]) == len(TEXTS)
    assert dynamo_counters()["graphs"] == 2


def test_trainer_evaluation_with_fast_generation_scores_the_same(tmp_path, monkeypatch):
    from datasets import Dataset

    model, tokenizer = tiny_model("hybrid")
    sentences = ["a gorgeous, witty film", "dull", "it works", "a mess", "fine", "bad acting", "a joy to watch"]
    labels = ["positive", "negative", "positive", "negative", "positive", "negative", "positive"]
    enc = tokenizer(sentences, truncation=True)
    targets = tokenizer(labels).input_ids
    data = Dataset.from_dict({**enc, "labels": targets})
    monkeypatch.setattr(fast_decoding, "fast_generation", fast_eager)
    scores = []
    for fast in (False, True):
        args = HybridTrainingArguments(
            output_dir=str(tmp_path / str(fast)),
            use_cpu=True,
            bf16=False,
            per_device_eval_batch_size=4,  # batches of 4 and 3: one bucket
            predict_with_generate=True,
            generation_max_length=6,
            write_predictions=False,
            report_to=[],
            fast_generation=fast,
        )
        collator = Seq2SeqCollator(tokenizer)
        trainer = HybridTrainer(model, args, eval_dataset=data, processing_class=tokenizer, data_collator=collator)
        output = trainer.predict(data)
        scores.append((output.predictions.tolist(), output.metrics["test_loss"]))
    assert scores[1] == scores[0]
    assert dynamo_counters()["graphs"] == 2 and "generate" not in vars(model)


MIX_5 = ["default", "short", "lora", "__base__", "short"]
MIX_7 = ["lora", "lora", "__base__", "short", "lora", "__base__", "lora"]  # no 4-token prompt: shorter rows


@pytest.mark.parametrize(
    "generation", [dict(max_new_tokens=10), dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)]
)
def test_mixed_batch_tokens_equal_eager(generation):
    model, tokenizer = mixed_model()
    batch = _encode(tokenizer, TEXTS[:5])
    eager = model.generate(**batch, adapter_names=MIX_5, **generation)
    with fast_eager(model):
        fast = model.generate(**batch, adapter_names=MIX_5, **generation)
    assert torch.equal(fast, eager)
    # The rows really run their own adapters: the same rows under one adapter generate otherwise.
    assert not torch.equal(eager, model.generate(**batch, adapter_names=["default"] * 5, **generation))
    assert dynamo_counters()["graph_breaks"] == 0


def test_mixed_batches_compile_once_per_bucket():
    # 5 and 7 rows, different source lengths, different adapter mixes and so different per-row
    # prompt lengths: one bucket (8 rows), one encoder graph and one decoder-step graph.
    model, tokenizer = mixed_model()
    five, seven = _encode(tokenizer, TEXTS[:5]), _encode(tokenizer, TEXTS)
    eager = [model.generate(**b, adapter_names=n, max_new_tokens=8) for b, n in ((five, MIX_5), (seven, MIX_7))]
    with fast_eager(model):
        first = model.generate(**five, adapter_names=MIX_5, max_new_tokens=8)
        after_first = dynamo_counters()
        second = model.generate(**seven, adapter_names=MIX_7, max_new_tokens=8)
    assert dynamo_counters() == after_first
    assert after_first["graphs"] == 2 and after_first["graph_breaks"] == 0
    assert torch.equal(first, eager[0]) and torch.equal(second, eager[1])
    assert all(not layer._forward_hooks for layer in model.modules() if isinstance(layer, LoraLayer))


def test_generate_texts_fast_mixed_equals_eager(monkeypatch):
    model, tokenizer = mixed_model()
    monkeypatch.setattr(fast_decoding, "fast_generation", fast_eager)
    # Batches of 4 and 3 rows; the second has no soft-prompted row (its encoder input is token ids,
    # embedded by the fast path so that it runs the same graph).
    settings = dict(batch_size=4, max_new_tokens=10, progress=False, adapter_names=MIX_7)
    expected = generate_texts(model, tokenizer, TEXTS, **settings)
    assert generate_texts(model, tokenizer, TEXTS, fast=True, **settings) == expected
    assert dynamo_counters()["graphs"] == 2 and dynamo_counters()["graph_breaks"] == 0


@pytest.mark.slow  # inductor builds C++ kernels: about a minute on 2 busy cores
def test_inductor_fast_generation_equals_eager():
    model, tokenizer = tiny_model("hybrid")
    batch = _encode(tokenizer, TEXTS[:5])
    with merged_lora(model):
        eager = model.generate(**batch, max_new_tokens=12)
        with fast_generation(model):
            fast = model.generate(**batch, max_new_tokens=12)
    assert torch.equal(fast, eager)
    assert dynamo_counters()["graph_breaks"] == 0


@pytest.mark.parametrize("beams", [1, 2], ids=["greedy", "beams"])
def test_a_per_row_prefix_allowed_tokens_fn_sees_only_real_rows_and_equals_eager(beams):
    model, tokenizer = tiny_model("hybrid")
    texts = TEXTS[:3]  # padded up to a bucket of 4 rows on the fast path
    allowed = {0: [0, 1, 5, 7], 1: [1, 9, 11], 2: [1, 3, 4, 6, 8]}
    seen = set()

    def per_row(batch_id, _ids):
        seen.add(batch_id)
        return allowed[batch_id]  # a KeyError for any batch id past the real rows

    eager, fast = _eager_and_fast(
        model, tokenizer, texts, max_new_tokens=6, num_beams=beams, prefix_allowed_tokens_fn=per_row
    )
    assert torch.equal(fast, eager) and seen == {0, 1, 2}
    for row, tokens in enumerate(fast[:, 1:].tolist()):
        assert set(tokens) <= set(allowed[row]) | {tokenizer.pad_token_id}
