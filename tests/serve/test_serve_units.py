"""In-process: request parsing, how the batcher groups jobs, and one failing row in a batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from serve_helpers import TEXTS, offline, save_adapters

from peft_hybrid.serve.batcher import Batcher, Job, group_jobs
from peft_hybrid.serve.requests import GenerateRequest, Limits, RequestError, parse_request

LIMITS = Limits(max_input_tokens=64, max_new_tokens_limit=32)


def _runner(tmp_path: Path, **cache_options):
    """A `Runner` over the tiny preset with adapters "summ" and "lora" saved under ``tmp_path``;
    without ``cache_options`` both are loaded at startup, with them (``allow``, ``max_adapters``)
    none is and the cache loads on demand. Returns the runner and the adapters' folders."""
    from peft_hybrid import HybridConfig, HybridModel
    from peft_hybrid.modeling.loading import load_base
    from peft_hybrid.serve.adapters import IDLE_ADAPTER, AdapterCache
    from peft_hybrid.serve.engine import Runner

    paths = save_adapters(tmp_path, names=("summ", "lora"))
    base, tokenizer = load_base("preset:tiny")
    model = HybridModel(base, HybridConfig(mode="none"), tokenizer=tokenizer, adapter_name=IDLE_ADAPTER).eval()
    if cache_options:
        cache = AdapterCache(model, {}, **cache_options)
    else:
        cache = AdapterCache(model, {name: str(path) for name, path in paths.items()})
        cache.load_configured()
    return Runner(model, tokenizer, cache, LIMITS), paths


def test_nulls_are_defaults_as_inference_client_sends_them():
    params = {name: None for name in ("adapter_id", "best_of", "details", "do_sample", "grammar", "max_new_tokens")}
    params.update({"seed": None, "stop": None, "temperature": None, "top_k": None, "watermark": False})
    request = parse_request({"inputs": "hi", "parameters": params, "stream": False}, LIMITS)
    assert request == GenerateRequest(inputs="hi")
    assert request.adapter_id == "__base__" and not request.do_sample


def test_any_sampling_warper_means_sampling_as_in_tgi():
    for params in ({"temperature": 0.7}, {"top_k": 3}, {"top_p": 0.9}, {"typical_p": 0.5}, {"do_sample": True}):
        assert parse_request({"inputs": "hi", "parameters": params}, LIMITS).do_sample, params
    assert not parse_request({"inputs": "hi", "parameters": {"temperature": 1.0}}, LIMITS).do_sample


def test_a_route_and_the_body_disagreeing_on_stream_is_refused():
    with pytest.raises(RequestError, match="use /generate_stream"):
        parse_request({"inputs": "hi", "stream": True}, LIMITS, stream=False)
    assert parse_request({"inputs": "hi", "stream": True}, LIMITS).stream  # the compat route reads it


def test_settings_decide_the_groups():
    def job(**params):
        return Job(parse_request({"inputs": "hi", "parameters": params}, LIMITS), loop=None)

    jobs = [
        job(adapter_id="a"),
        job(adapter_id="b", max_new_tokens=3, stop=["x"]),  # budgets and stops are per row
        job(temperature=0.5),
        job(temperature=0.5, adapter_id="b"),
        job(temperature=0.9),
        job(do_sample=True, seed=1),
        job(do_sample=True, seed=2),  # a seed gets a batch of its own
        job(repetition_penalty=1.3),
    ]
    groups = [[jobs.index(j) for j in group] for group in group_jobs(jobs)]
    assert groups == [[0, 1], [2, 3], [4], [5], [6], [7]]


def test_the_batcher_waits_for_companions_then_drops_cancelled_jobs():
    seen = []

    async def scenario():
        def record(jobs):
            seen.append([j.request.inputs for j in jobs])

        batcher = Batcher(record, max_batch_size=3, max_wait_ms=200, max_queue=8)
        await batcher.start()
        loop = asyncio.get_running_loop()
        jobs = [Job(GenerateRequest(inputs=str(i)), loop) for i in range(5)]
        jobs[3].cancelled = True
        for job in jobs[:2]:
            batcher.submit(job)
        await asyncio.sleep(0.05)  # within the first job's 200 ms
        for job in jobs[2:]:
            batcher.submit(job)
        await asyncio.sleep(0.6)
        await batcher.stop()

    asyncio.run(scenario())
    assert seen == [["0", "1", "2"], ["4"]]


def test_a_full_queue_refuses_with_503():
    async def scenario():
        batcher = Batcher(lambda jobs: None, max_batch_size=1, max_wait_ms=0, max_queue=1)
        batcher._queue = asyncio.Queue(1)  # not started: nothing takes jobs off the queue
        loop = asyncio.get_running_loop()
        batcher.submit(Job(GenerateRequest(inputs="a"), loop))
        with pytest.raises(RequestError) as refused:
            batcher.submit(Job(GenerateRequest(inputs="b"), loop))
        return refused.value

    error = asyncio.run(scenario())
    assert (error.status, error.error_type, error.headers) == (503, "overloaded", {"Retry-After": "1"})


def test_one_failing_row_never_fails_the_others(tmp_path):
    runner, paths = _runner(tmp_path)
    generate = runner._generate

    def poisoned(held):  # a row whose generation raises, inside a batch and alone
        if any(job.request.inputs == "POISON" for job, _ in held):
            raise RuntimeError("row exploded")
        return generate(held)

    runner._generate = poisoned

    async def scenario():
        loop = asyncio.get_running_loop()
        params = [("summ", TEXTS[0]), ("lora", "POISON"), ("lora", TEXTS[1])]
        jobs = [Job(GenerateRequest(inputs=t, adapter_id=a, max_new_tokens=6), loop) for a, t in params]
        await loop.run_in_executor(None, runner, jobs)
        results = []
        for job in jobs:
            event = await job.events.get()
            while not isinstance(event, RequestError) and event.final is None:
                event = await job.events.get()
            results.append(event)
        return results

    summ, poison, lora = asyncio.run(scenario())
    assert isinstance(poison, RequestError) and poison.status == 500 and "row exploded" in poison.message
    assert summ.final.generated_text == offline(paths["summ"], [TEXTS[0]], 6)[0]
    assert lora.final.generated_text == offline(paths["lora"], [TEXTS[1]], 6)[0]


def test_a_group_of_one_adapter_runs_merged_and_a_mixed_one_per_row(tmp_path, monkeypatch):
    import peft_hybrid.modeling.lora

    runner, _ = _runner(tmp_path)
    merged = []
    real = peft_hybrid.modeling.lora.merged_layers

    def counting(model):
        merged.append(True)
        return real(model)

    monkeypatch.setattr(peft_hybrid.modeling.lora, "merged_layers", counting)

    def run(adapters):
        async def scenario():
            loop = asyncio.get_running_loop()
            jobs = [Job(GenerateRequest(inputs=TEXTS[0], adapter_id=a, max_new_tokens=4), loop) for a in adapters]
            await loop.run_in_executor(None, runner, jobs)
            return [await job.events.get() for job in jobs]

        return asyncio.run(scenario())

    uniform = run(["lora", "lora", "lora"])
    assert merged == [True]
    mixed = run(["lora", "summ", "__base__"])
    assert merged == [True]  # the mixed batch ran per-row LoRA, nothing merged
    # "lora" scales by alpha / r = 2: the merged weights and the per-row LoRA give one answer.
    assert uniform[0].final.generated_text == mixed[0].final.generated_text


@pytest.mark.parametrize("module", ["formatting", "requests", "batcher"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    results = doctest.testmod(importlib.import_module(f"peft_hybrid.serve.{module}"))
    assert results.attempted > 0 and results.failed == 0


def test_more_adapters_in_a_group_than_slots_run_in_rounds_never_evicting_one_in_use(tmp_path):
    runner, paths = _runner(tmp_path, allow=[f"{tmp_path}/*"], max_adapters=1)
    batches = []
    generate = runner._generate
    runner._generate = lambda held: batches.append([name for _, name in held]) or generate(held)
    adapters = [str(paths["summ"]), str(paths["lora"]), str(paths["summ"])]

    async def scenario():
        loop = asyncio.get_running_loop()
        jobs = [Job(GenerateRequest(inputs=TEXTS[1], adapter_id=a, max_new_tokens=5), loop) for a in adapters]
        await loop.run_in_executor(None, runner, jobs)
        finals = []
        for job in jobs:
            event = await job.events.get()
            while event.final is None:
                event = await job.events.get()
            finals.append(event.final.generated_text)
        return finals

    finals = asyncio.run(scenario())
    assert [len(b) for b in batches] == [2, 1]  # both summ rows first; lora once summ was released
    assert finals == [offline(Path(a), [TEXTS[1]], 5)[0] for a in adapters]
    assert runner.cache.loaded() == [str(paths["lora"])]


def test_the_static_scheduler_refuses_a_logits_processor_instead_of_ignoring_it(tmp_path):
    runner, _ = _runner(tmp_path)

    async def scenario():
        loop = asyncio.get_running_loop()
        request = GenerateRequest(inputs=TEXTS[0], adapter_id="lora", logits_processor=lambda ids, scores: scores)
        job = Job(request, loop)
        await loop.run_in_executor(None, runner, [job])
        return await job.events.get()

    refused = asyncio.run(scenario())
    assert isinstance(refused, RequestError) and refused.status == 422 and "--scheduler continuous" in refused.message


def test_an_outbox_delivers_a_steps_events_in_order_in_one_wake_up_of_the_loop():
    from peft_hybrid.serve.batcher import Final, Outbox, TokenEvent

    async def scenario():
        loop = asyncio.get_running_loop()
        jobs = [Job(GenerateRequest(inputs="hi"), loop) for _ in range(3)]
        wakeups = []
        wake = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *args: (wakeups.append(args), wake(*args))[1]
        outbox = Outbox()
        final = Final("text", "length", 2, None, 3)
        sent = [(0, TokenEvent(1, {"id": 5})), (1, TokenEvent(1, None, final)), (0, TokenEvent(2, None, final))]
        sent.append((2, RequestError("bad row")))
        for job, event in sent:
            outbox.send(jobs[job], event)
        recorded = [(job.finished, job.emitted) for job in jobs]  # at once, before any delivery
        assert all(job.events.empty() for job in jobs)
        outbox.flush()
        outbox.flush()  # nothing left: no wake-up
        await asyncio.sleep(0)
        got = [[job.events.get_nowait() for _ in range(job.events.qsize())] for job in jobs]
        return recorded, len(wakeups), got, sent

    recorded, wakeups, got, sent = asyncio.run(scenario())
    assert recorded == [(True, 2), (True, 1), (True, 0)]
    assert wakeups == 1
    assert got == [[sent[0][1], sent[2][1]], [sent[1][1]], [sent[3][1]]]
