"""Generating one batch of jobs: transformers' ``generate`` on the mixed-task batch, watched step by step.

`prepare` formats and tokenizes a job's input (`peft_hybrid.serve.formatting`) and checks its
length. `Runner` takes a group of jobs from the batcher, holds each job's adapter
(`peft_hybrid.serve.adapters.AdapterCache`), and runs them as one ``HybridModel.generate`` call
with one adapter name per row. A stopping criterion sees every new token of every row: it sends
the row's token event at once (so streams get one event per step), ends the row at its own
``max_new_tokens``, stop sequence or end-of-sequence token, and ends rows whose client went away.
Since the call is the same ``generate`` offline prediction makes, greedy rows get offline's tokens.

A batch that raises is retried row by row, so one bad row never fails the others.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from peft_hybrid.serve.adapters import AdapterBusy, AdapterCache
from peft_hybrid.serve.batcher import Final, Job, TokenEvent
from peft_hybrid.serve.formatting import decode_output, format_request, generation_defaults, max_source_tokens
from peft_hybrid.serve.requests import Limits, RequestError

logger = logging.getLogger("peft_hybrid.serve")


def prepare(job: Job, adapter_config, tokenizer, limits: Limits) -> None:
    """Tokenize the job's formatted input and fix its token budget, or raise a 422 `RequestError`."""
    request = job.request
    text = format_request(adapter_config, request.inputs)
    ids = tokenizer(text)["input_ids"]
    if request.truncate is not None:
        ids = ids[-request.truncate :]  # TGI keeps the last N tokens (here: the end-of-sequence token too)
    elif len(ids) > limits.max_input_tokens:
        raise RequestError(
            f"`inputs` must have at most {limits.max_input_tokens} tokens (after the adapter's task "
            f"formatting). Given: {len(ids)}. Send a shorter input or set `truncate`."
        )
    # Offline prediction keeps the adapter's max source length; so does the server, for the same answer.
    keep = max_source_tokens(adapter_config)
    if len(ids) > keep and request.truncate is None:
        ids = tokenizer(text, truncation=True, max_length=keep)["input_ids"]
    elif len(ids) > keep:
        ids = ids[-keep:]
    job.input_ids = ids
    default = min(generation_defaults(adapter_config)["max_new_tokens"], limits.max_new_tokens_limit)
    job.max_new_tokens = request.max_new_tokens or default


class Runner:
    """Runs one group of jobs (the batcher's ``run``), in the worker thread that owns the model."""

    def __init__(self, model, tokenizer, cache: AdapterCache, limits: Limits, on_tokens=None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.limits = limits
        self.on_tokens = on_tokens  # callback(adapter_id, count) for the metrics

    def __call__(self, jobs: list[Job]) -> None:
        pending = jobs
        while pending:
            held, waiting = self._hold(pending)
            try:
                if held:
                    self._generate_isolated(held)
            finally:
                for _, name in held:
                    self.cache.release(name)
            pending = waiting

    def _hold(self, jobs: list[Job]) -> tuple[list[tuple[Job, str]], list[Job]]:
        """Each job's adapter loaded and held; jobs that find every adapter slot busy wait for the next round."""
        held, waiting = [], []
        for job in jobs:
            if job.cancelled:
                continue
            if job.request.logits_processor is not None:
                job.send(RequestError("structured output needs the continuous scheduler (--scheduler continuous)."))
                continue
            try:
                name = self.cache.acquire(job.request.adapter_id)
            except AdapterBusy:
                if held:
                    waiting.append(job)
                else:
                    busy = "every adapter slot (--max-adapters) is held by the running batch; retry shortly"
                    job.send(RequestError(busy, status=503, error_type="overloaded", headers={"Retry-After": "1"}))
                continue
            except RequestError as err:
                job.send(err)
                continue
            try:
                if job.input_ids is None:
                    prepare(job, self.cache.config(job.request.adapter_id), self.tokenizer, self.limits)
            except Exception as err:
                self.cache.release(name)
                job.send(err if isinstance(err, RequestError) else generation_error(err))
                continue
            held.append((job, name))
        return held, waiting

    def _generate_isolated(self, held: list[tuple[Job, str]]) -> None:
        try:
            self._generate(held)
        except Exception as err:
            if len(held) == 1:
                self._fail(held[0][0], err)
                return
            logger.warning("a batch of %d failed (%s); running its rows one by one", len(held), err)
            for job, name in held:
                if job.emitted:  # a stream that already has tokens cannot be restarted
                    self._fail(job, err)
                else:
                    self._generate_isolated([(job, name)])

    def _fail(self, job: Job, err: Exception) -> None:
        if not job.finished:
            logger.error("generation failed for one request: %s", err)
            job.send(generation_error(err))

    @torch.inference_mode()
    def _generate(self, held: list[tuple[Job, str]]) -> None:
        jobs = [job for job, _ in held]
        request = jobs[0].request  # every job of a group decodes with the same settings
        pad = self.tokenizer.pad_token_id
        width = max(len(job.input_ids) for job in jobs)
        input_ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            input_ids[row, : len(job.input_ids)] = torch.tensor(job.input_ids)
            attention_mask[row, : len(job.input_ids)] = 1
        settings, seed = _settings(request)
        watch = _Watch(jobs, self.tokenizer, seed)
        device = self.model.device
        self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            adapter_names=[name for _, name in held],
            max_new_tokens=max(job.max_new_tokens for job in jobs),
            logits_processor=LogitsProcessorList([watch.scores]),
            stopping_criteria=StoppingCriteriaList([watch]),
            **settings,
        )
        watch.finish()
        if self.on_tokens is not None:
            for job, row in zip(jobs, watch.rows):
                self.on_tokens(job.request.adapter_id, len(row.ids))


def generation_error(err: Exception) -> RequestError:
    return RequestError(f"generation failed: {err}", status=500, error_type="generation")


def _settings(request) -> tuple[dict[str, Any], int | None]:
    settings: dict[str, Any] = {"num_beams": 1, "do_sample": request.do_sample}
    if request.repetition_penalty is not None:
        settings["repetition_penalty"] = request.repetition_penalty
    if not request.do_sample:
        return settings, None
    for name in ("temperature", "top_p", "top_k", "typical_p"):
        if getattr(request, name) is not None:
            settings[name] = getattr(request, name)
    seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**63)
    torch.manual_seed(seed)  # the worker is the only thread that generates: this seed is the batch's
    return settings, seed


class _Scores(LogitsProcessor):
    """Keeps each step's log-probabilities (after repetition penalty, before sampling warpers)."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted  # only streams and details report them
        self.logprobs: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.wanted:
            self.logprobs = torch.log_softmax(scores.float(), dim=-1)
        return scores


class _Row:
    def __init__(self, job: Job, special: set[int], eos: int) -> None:
        self.job = job
        self.special = special
        self.eos = eos
        # A plain request needs its text once, at the end; streams and details need every token's
        # event, and stop sequences the text at every step.
        self.streams = job.request.stream or job.request.details
        self.reads_text = self.streams or bool(job.request.stop)
        self.ids: list[int] = []
        self.text = ""
        self.done = False

    def step(self, token: int, logprob: float, tokenizer, seed: int | None) -> bool:
        """Record one token of this row and send its event; True when the row has ended."""
        if self.done or self.job.cancelled:
            self.done = True
            return True
        self.ids.append(token)
        piece = self._read(tokenizer) if self.reads_text else ""
        reason = None
        if token == self.eos:
            reason = "eos_token"
        elif len(self.ids) >= self.job.max_new_tokens:
            reason = "length"
        elif any(self.text.endswith(stop) for stop in self.job.request.stop):  # TGI: the text ends with it
            reason = "stop_sequence"
        self.done = reason is not None
        if self.streams:
            logprob = logprob if math.isfinite(logprob) else -1e30  # JSON has no -Infinity
            token_json = {"id": token, "text": piece, "logprob": logprob, "special": token in self.special}
            final = self.final(reason, seed, tokenizer) if reason else None
            self.job.send(TokenEvent(index=len(self.ids), token=token_json, final=final))
        elif self.done:
            self.job.send(TokenEvent(index=len(self.ids), token=None, final=self.final(reason, seed, tokenizer)))
        return self.done

    def _read(self, tokenizer) -> str:
        """The text so far; returns what this token added to it."""
        text = decode_output(tokenizer, self.ids)
        # Pieces are differences of whole decodes, so they join to the final text (TGI does the same).
        piece = text[len(self.text) :] if text.startswith(self.text) else ""
        self.text = text
        return piece

    def final(self, reason: str, seed: int | None, tokenizer) -> Final:
        if not self.reads_text:
            self._read(tokenizer)
        text = self.text
        if self.job.request.return_full_text:
            text = self.job.request.inputs + text
        return Final(text, reason, len(self.ids), seed, len(self.job.input_ids))


class _Watch(StoppingCriteria):
    """Sees each step's new token for every row: sends it, and says which rows have ended."""

    def __init__(self, jobs: list[Job], tokenizer, seed: int | None) -> None:
        self.tokenizer = tokenizer
        self.seed = seed
        special = set(tokenizer.all_special_ids)
        self.rows = [_Row(job, special, tokenizer.eos_token_id) for job in jobs]
        self.scores = _Scores(wanted=any(row.streams for row in self.rows))

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1:]
        tokens = last[:, 0].tolist()
        if self.scores.wanted:
            logprobs = self.scores.logprobs.gather(1, last.to(self.scores.logprobs.device))[:, 0].tolist()
        else:
            logprobs = [0.0] * len(tokens)
        done = [row.step(t, lp, self.tokenizer, self.seed) for row, t, lp in zip(self.rows, tokens, logprobs)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def finish(self) -> None:
        """A row still open when ``generate`` returned has used its budget: end it with what it has."""
        for row in self.rows:
            if not row.done and not row.job.cancelled and not row.job.finished:
                row.done = True
                final = row.final("length", self.seed, self.tokenizer)
                row.job.send(TokenEvent(index=len(row.ids), token=None, final=final))
