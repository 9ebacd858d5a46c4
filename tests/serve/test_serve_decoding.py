"""Per-row decoding in-process: incremental text, sampling settings, and a row's own logits processor."""

from __future__ import annotations

import asyncio

import pytest
import torch
from serve_helpers import TEXTS, offline, save_adapters

from peft_hybrid.serve.batcher import Job
from peft_hybrid.serve.decoding import Detokenizer, RowDecoder, greedy_choices
from peft_hybrid.serve.formatting import decode_output
from peft_hybrid.serve.requests import GenerateRequest, Limits, RequestError


@pytest.fixture(scope="module")
def tokenizer():
    from peft_hybrid.modeling.loading import load_base

    return load_base("preset:tiny")[1]


def test_pieces_join_to_the_text_offline_decoding_gives(tokenizer):
    words = torch.tensor([i for i in range(len(tokenizer)) if i not in set(tokenizer.all_special_ids)])
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        count = int(torch.randint(1, 30, (1,), generator=generator))
        ids = [*words[torch.randint(0, len(words), (count,), generator=generator)].tolist(), tokenizer.eos_token_id]
        detok = Detokenizer(tokenizer)
        pieces = []
        for token in ids:
            pieces.append(detok.add(token))
            assert len(detok.ids) - detok._prefix <= 3  # the decoded window stays short: O(1) per token
        text, rest = detok.finish()
        assert text == decode_output(tokenizer, ids)
        assert "".join(pieces) + rest == text


def test_a_row_is_greedy_or_samples_only_from_what_its_warpers_keep():
    logits = torch.tensor([0.0, 5.0, 4.9, -3.0, 1.0])
    assert RowDecoder(GenerateRequest("x"), start_token=0).choose(logits)[0] == 1
    penalised = RowDecoder(GenerateRequest("x", repetition_penalty=2.0), start_token=0)
    penalised.record(1)
    assert penalised.choose(logits)[0] == 2  # token 1 was generated: its logit halves
    top2 = RowDecoder(GenerateRequest("x", do_sample=True, top_k=2, seed=3), start_token=0)
    drawn = {top2.choose(logits)[0] for _ in range(50)}
    assert drawn <= {1, 2} and len(drawn) == 2
    again = RowDecoder(GenerateRequest("x", do_sample=True, top_k=2, seed=3), start_token=0)
    first = RowDecoder(GenerateRequest("x", do_sample=True, top_k=2, seed=3), start_token=0)
    assert [again.choose(logits)[0] for _ in range(20)] == [first.choose(logits)[0] for _ in range(20)]


def _words(tokenizer, words):
    return [tokenizer(word, add_special_tokens=False)["input_ids"] for word in words]


class OneOf:
    """A logits processor that lets a row say only one of ``words`` and then end."""

    def __init__(self, tokenizer, words) -> None:
        self.words = _words(tokenizer, words)
        self.eos = tokenizer.eos_token_id
        self.calls: list[list[int]] = []

    def __call__(self, generated: list[int], scores: torch.Tensor) -> torch.Tensor:
        self.calls.append(list(generated))
        allowed = {
            w[len(generated)] for w in self.words if w[: len(generated)] == generated and len(w) > len(generated)
        }
        if any(w == generated for w in self.words):
            allowed.add(self.eos)
        masked = torch.full_like(scores, float("-inf"))
        masked[list(allowed)] = scores[list(allowed)]
        return masked


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    """The tiny base with adapter "lora" loaded, its cache, and the adapter's folder."""
    from peft_hybrid import HybridConfig, HybridModel
    from peft_hybrid.modeling.loading import load_base
    from peft_hybrid.serve.adapters import IDLE_ADAPTER, AdapterCache

    paths = save_adapters(tmp_path_factory.mktemp("adapters"), names=("lora",))
    base, tok = load_base("preset:tiny")
    model = HybridModel(base, HybridConfig(mode="none"), tokenizer=tok, adapter_name=IDLE_ADAPTER).eval()
    cache = AdapterCache(model, {"lora": str(paths["lora"])})
    cache.load_configured()
    return model, tok, cache, paths["lora"]


def _answers(served_model, requests, spy=None, **options):
    """Each request's `Final` (or its `RequestError`) from a `ContinuousBatcher` run in this process."""
    from peft_hybrid.serve.scheduler import ContinuousBatcher

    model, tok, cache, _ = served_model

    async def run():
        options.setdefault("max_batch_size", 8)
        options.setdefault("max_batch_total_tokens", 4096)
        batcher = ContinuousBatcher(model, tok, cache, Limits(), **options)
        if spy is not None:
            spy(batcher)
        await batcher.start()
        loop = asyncio.get_running_loop()
        jobs = [Job(request, loop) for request in requests]
        for job in jobs:
            batcher.submit(job)
        out = []
        for job in jobs:
            event = await job.events.get()
            while not isinstance(event, RequestError) and event.final is None:
                event = await job.events.get()
            out.append(event if isinstance(event, RequestError) else event.final)
        await batcher.stop()
        return out

    return asyncio.run(run())


def test_a_rows_logits_processor_constrains_it_alone_from_the_first_step(served_model):
    tok, folder = served_model[1], served_model[3]
    processors = [OneOf(tok, ["positive", "negative"]) for _ in range(2)]
    requests = [
        GenerateRequest(TEXTS[0], adapter_id="lora", max_new_tokens=10, logits_processor=processors[0]),
        GenerateRequest(TEXTS[1], adapter_id="lora", max_new_tokens=6),
        GenerateRequest(
            TEXTS[2], adapter_id="lora", max_new_tokens=10, do_sample=True, seed=1, logits_processor=processors[1]
        ),
    ]
    constrained, plain, sampled = _answers(served_model, requests)
    assert constrained.generated_text in ("positive", "negative") and constrained.finish_reason == "eos_token"
    assert sampled.generated_text in ("positive", "negative")
    assert plain.generated_text == offline(folder, [TEXTS[1]], 6)[0]  # its neighbour is unconstrained
    for processor in processors:
        assert processor.calls[0] == []  # the first step is constrained too


def test_the_token_budget_admits_a_request_only_when_it_fits(served_model):
    tok, folder = served_model[1], served_model[3]
    running = []  # rows in flight each time new rows joined

    def spy(batcher):
        join = batcher._join
        batcher._join = lambda joining: (running.append(len(batcher.rows)), join(joining))[1]

    one = len(tok(TEXTS[0])["input_ids"]) + 5  # one request's input + max_new_tokens
    requests = [GenerateRequest(TEXTS[0], adapter_id="lora", max_new_tokens=5) for _ in range(3)]
    too_big = GenerateRequest(TEXTS[0], adapter_id="lora", max_new_tokens=one)
    answers = _answers(served_model, [*requests, too_big], spy=spy, max_batch_total_tokens=one + 1)
    assert running == [0, 0, 0]  # room for one row: each joined an empty batch
    want = offline(folder, [TEXTS[0]], 5)[0]
    assert [a.generated_text for a in answers[:3]] == [want] * 3
    assert isinstance(answers[3], RequestError) and "--max-batch-total-tokens" in answers[3].message


def test_greedy_rows_are_chosen_together_with_each_rows_own_log_probability():
    """One argmax and one log-softmax for the batch's plain greedy rows give what each row alone gives."""
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 4
    for greedy, streams in (([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]), ([0, 2, 3, 5], [2, 5]), ([1], []), ([], [])):
        tokens, logprobs = greedy_choices(logits, greedy, streams)
        assert tokens == [int(logits[i].argmax()) if i in greedy else 0 for i in range(6)]
        assert logprobs == {i: float(torch.log_softmax(logits[i], -1)[tokens[i]]) for i in streams}
