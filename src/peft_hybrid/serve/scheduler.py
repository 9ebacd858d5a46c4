"""Continuous (iteration-level) batching of seq2seq rows: the default ``--scheduler continuous``.

One worker thread owns the model and a running batch of rows (`peft_hybrid.serve.rowbatch.RowBatch`).
Every iteration it (1) attaches adapters the loader thread has fetched, (2) drops rows whose
client went away, (3) admits waiting requests while the batch has a free row
(``--max-batch-size``) and the token budget allows (``--max-batch-total-tokens``: input plus
``max_new_tokens`` of every row in flight): they run their encoder pass and first decoder step
together, with their own prompts and LoRA, then join the batch, and (4) runs one decoder step
for every row. A row that ends (end of sequence, its own ``max_new_tokens``, a stop sequence)
gets its answer and leaves at once; its slot and tokens go to the next waiting request.

Admission is first come, first served: a request that does not fit waits at the head until rows
leave (later ones do not overtake it, so a long request is never starved). A request for an
adapter that is not loaded waits aside while the loader thread fetches it (a Hub download runs
there); the batch keeps stepping meanwhile, and the adapter is attached between two steps.
Each row decodes with its own settings and generator (`peft_hybrid.serve.decoding`).

With ``--fast`` the running batch is a `peft_hybrid.serve.slotbatch.SlotBatch` (fixed shapes, one
compiled decoder step as rows come and go), built at the first join and kept while the server runs.

The queue is bounded (``--max-queue``; beyond it 503 with ``Retry-After``), as with ``--scheduler static``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from peft_hybrid.serve.adapters import AdapterBusy
from peft_hybrid.serve.batcher import RETRY_AFTER_S, Job, Outbox
from peft_hybrid.serve.decoding import greedy_choices
from peft_hybrid.serve.engine import prepare
from peft_hybrid.serve.requests import RequestError
from peft_hybrid.serve.rowbatch import RowBatch
from peft_hybrid.serve.rows import Row, generation_error
from peft_hybrid.serve.slotbatch import SlotBatch

logger = logging.getLogger("peft_hybrid.serve")


class ContinuousBatcher:
    """The queue, the running batch and the worker thread that steps it.

    Example:
        >>> batcher = ContinuousBatcher(None, None, None, None, max_batch_size=8, max_batch_total_tokens=4096)
        >>> batcher.max_batch_size, batcher.depth()
        (8, 0)
    """

    def __init__(
        self,
        model,
        tokenizer,
        cache,
        limits,
        *,
        max_batch_size: int,
        max_batch_total_tokens: int,
        max_queue: int = 256,
        metrics=None,
        fast: Callable[[], SlotBatch] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.limits = limits
        self.max_batch_size = max_batch_size
        self.max_batch_total_tokens = max_batch_total_tokens
        self.max_queue = max_queue
        self.metrics = metrics
        self.fast = fast  # builds the fixed-shape batch of the compiled decoder step; None: eager RowBatch
        self._waiting: collections.deque[Job] = collections.deque()
        self._parked: dict[str, list[Job]] = {}  # adapter id -> jobs waiting for its fetch
        self._fetched: collections.deque = collections.deque()  # (adapter id, folder or error) from the loader
        self._pending_attach: list[tuple[str, object]] = []  # fetched, waiting for a free adapter slot
        self._calls: collections.deque = collections.deque()  # (fn, future) to run between steps
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loader: ThreadPoolExecutor | None = None
        # Tokenizing runs in its own thread with its own tokenizer (a fast tokenizer must not be
        # shared between threads), off the event loop and off the worker's steps.
        self._tokenizer_pool: ThreadPoolExecutor | None = None
        self._request_tokenizer = copy.deepcopy(tokenizer)
        self._tokenizing = 0
        self.rows: list[Row] = []
        self.batch: RowBatch | SlotBatch | None = None
        self._next: torch.Tensor | None = None  # each row's newest token, the next step's input
        self._outbox = Outbox()  # the rows' events, sent once per step
        self._start_token = None if model is None else model.base_model.config.decoder_start_token_id

    # --- the event loop's side ----------------------------------------------------------------
    async def start(self) -> None:
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="peft-hybrid-adapter-loader")
        self._tokenizer_pool = ThreadPoolExecutor(1, thread_name_prefix="peft-hybrid-tokenizer")
        self._thread = threading.Thread(target=self._run, name="peft-hybrid-serve", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the worker (after the server has answered every request it accepted)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        for pool in (self._tokenizer_pool, self._loader):
            if pool is not None:
                pool.shutdown(wait=True)

    async def call_in_worker(self, fn):
        """Run ``fn`` in the worker thread between two decoder steps (it may change the model's adapters)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._calls.append((fn, future))
            self._cond.notify_all()
        return await asyncio.wrap_future(future)

    def depth(self) -> int:
        """Requests waiting to join the batch (their adapter's fetch included)."""
        with self._cond:
            return self._depth()

    def _depth(self) -> int:
        return len(self._waiting) + self._tokenizing + sum(len(jobs) for jobs in self._parked.values())

    def in_flight(self) -> tuple[int, int]:
        """``(rows in the running batch, their token budget)``, for the metrics."""
        rows = list(self.rows)
        return len(rows), sum(row.cost for row in rows)

    def submit(self, job: Job) -> None:
        """Queue ``job``, or refuse it with 503 when ``max_queue`` requests are already waiting.

        A job for a loaded adapter is tokenized in the tokenizer thread first; one for an adapter
        still to load waits for its fetch and is tokenized once its adapter's settings are known.
        """
        with self._cond:
            if self._depth() >= self.max_queue:
                raise RequestError(
                    f"Model is overloaded: {self.max_queue} requests are already waiting; retry shortly.",
                    status=503,
                    error_type="overloaded",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            if job.input_ids is not None or not self.cache.is_loaded(job.request.adapter_id):
                self._waiting.append(job)
                self._cond.notify_all()
                return
            self._tokenizing += 1
        self._tokenizer_pool.submit(self._tokenize, job)

    def _tokenize(self, job: Job) -> None:
        try:
            prepare(job, self.cache.config(job.request.adapter_id), self._request_tokenizer, self.limits)
        except Exception as err:
            job.send(err if isinstance(err, RequestError) else generation_error(err))
        finally:
            with self._cond:
                self._tokenizing -= 1
                if job.input_ids is not None and not job.finished:
                    self._waiting.append(job)
                self._cond.notify_all()

    # --- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._fetched or self.rows or self._calls):
                    self._cond.wait()
                if self._stopping and not self.rows and not self._waiting and not self._parked:
                    break
            try:
                self._iterate()
            except Exception as err:  # a broken step fails the rows it held, never the worker
                logger.exception("a decoder step failed; answering its rows with the error")
                self._fail_all(err)
            self._outbox.flush()
        if self.batch is not None:
            self.batch.close_adapters()

    def _iterate(self) -> None:
        self._run_calls()
        self._attach_fetched()
        self._drop_cancelled()
        joining = self._admit()
        if joining:
            self._join(joining)
        if self.rows:
            self._step()
        elif not joining and not self._fetched:
            with self._cond:  # only parked jobs or head-of-line waits: sleep until something changes
                if not self._stopping and not self._fetched:
                    self._cond.wait(0.05)

    def _run_calls(self) -> None:
        while True:
            with self._cond:
                if not self._calls:
                    return
                fn, future = self._calls.popleft()
            if self.batch is not None:
                self.batch.close_adapters()  # the layers may change: the hooks are rebuilt at the next step
            try:
                future.set_result(fn())
            except Exception as err:
                future.set_exception(err)

    def _admit(self) -> list[tuple[Job, str]]:
        """Waiting jobs that fit now, in arrival order, each with its adapter held."""
        joining: list[tuple[Job, str]] = []
        rows, tokens = self.in_flight()
        while rows + len(joining) < self.max_batch_size:
            with self._cond:
                if not self._waiting:
                    break
                job = self._waiting[0]
            if job.cancelled:
                self._pop()
                continue
            adapter_id = job.request.adapter_id
            if not self.cache.is_loaded(adapter_id):
                self._pop()
                self._park(job)
                continue
            try:
                name = self.cache.acquire(adapter_id)
            except AdapterBusy:
                break  # every adapter slot is held by the running rows: wait for rows to leave
            try:
                if job.input_ids is None:
                    prepare(job, self.cache.config(adapter_id), self.tokenizer, self.limits)
                cost = len(job.input_ids) + job.max_new_tokens
                if cost > self.max_batch_total_tokens:
                    raise RequestError(
                        f"`inputs` and `max_new_tokens` need {cost} tokens, more than the server's "
                        f"--max-batch-total-tokens {self.max_batch_total_tokens}; send less or ask for fewer tokens."
                    )
            except Exception as err:
                self.cache.release(name)
                self._pop()
                job.send(err if isinstance(err, RequestError) else generation_error(err))
                continue
            if tokens + cost > self.max_batch_total_tokens:
                self.cache.release(name)
                break
            self._pop()
            tokens += cost
            joining.append((job, name))
        return joining

    def _pop(self) -> None:
        with self._cond:
            self._waiting.popleft()

    def _join(self, joining: list[tuple[Job, str]]) -> None:
        """Prefill the joining rows together, answer those that end at once, add the rest to the batch."""
        now = time.monotonic()
        rows = []
        for job, name in joining:
            if self.metrics is not None:
                self.metrics.queue_time.observe(now - job.enqueued)
            rows.append(Row(job, name, self.tokenizer, self._start_token, self._outbox))
        if self.batch is not None:
            self.batch.close_adapters()  # the new rows' encoder pass hooks the layers with their own LoRA
        try:
            batch, logits = RowBatch.prefill(
                self.model,
                [row.job.input_ids for row in rows],
                [row.name for row in rows],
                self.tokenizer.pad_token_id,
            )
        except Exception as err:
            logger.exception("the encoder pass of %d joining rows failed", len(rows))
            for row in rows:
                self._end(row, error=generation_error(err))
            return
        tokens = self._advance(rows, logits)
        if self.batch is None and self.fast is not None:
            self.batch = self.fast()
        if self.batch is None:
            self.batch, self.rows, self._next = batch, rows, tokens
        else:
            self.batch.concat(batch)
            self.rows = self.rows + rows
            self._next = tokens if self._next is None else torch.cat([self._next, tokens])
        self._leave()
        self._outbox.flush()

    def _step(self) -> None:
        logits = self.batch.step(self._next)
        self._next = self._advance(self.rows, logits)
        self._leave()
        self._outbox.flush()  # the step's events in one wake-up of the event loop, once ended rows have left

    def _advance(self, rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token (plain greedy rows together: `greedy_choices`); sends the events; returns them."""
        greedy = [i for i, row in enumerate(rows) if row.decoder.plain_greedy]
        tokens, logprobs = greedy_choices(logits, greedy, [i for i in greedy if rows[i].streams])
        for i, row in enumerate(rows):
            try:
                chosen = None if row.decoder.plain_greedy else row.decoder.choose(logits[i])  # (token, scores)
                tokens[i], scores = (tokens[i], None) if chosen is None else chosen
                row.add(tokens[i], scores, logprob=logprobs.get(i))
            except Exception as err:  # e.g. a request's logits processor raising: that row only
                logger.warning("one row failed: %s", err)
                row.fail(generation_error(err))
            if row.ended:
                self._end(row)
        return torch.tensor(tokens, dtype=torch.long)

    def _drop_cancelled(self) -> None:
        for row in self.rows:
            if row.job.cancelled and not row.ended:
                row.ended = True
                self._end(row)
        self._leave()

    def _leave(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if not row.ended]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.batch.close_adapters()
            if self.fast is None:
                self.batch = None  # the next rows start a batch of their own
            else:
                self.batch.filter([])  # the fixed-shape batch (and its compiled graph) stays for the next rows
            self.rows, self._next = [], None
            return
        self.batch.filter(keep)
        self.rows = [self.rows[i] for i in keep]
        self._next = self._next[torch.tensor(keep)]

    def _end(self, row: Row, error: RequestError | None = None) -> None:
        row.ended = True
        if error is not None:
            row.fail(error)
        self.cache.release(row.name)
        if self.metrics is not None:
            self.metrics.tokens.labels(row.job.request.adapter_id).inc(len(row.decoder.ids))

    def _fail_all(self, err: Exception) -> None:
        for row in self.rows:
            if not row.ended:
                self._end(row, error=generation_error(err))
        if self.batch is not None:
            self.batch.close_adapters()
        self.batch, self.rows, self._next = None, [], None

    # --- lazy adapters: fetched in the loader thread, attached here between steps ------------
    def _park(self, job: Job) -> None:
        adapter_id = job.request.adapter_id
        with self._cond:
            first = adapter_id not in self._parked
            self._parked.setdefault(adapter_id, []).append(job)
        if first:
            self._loader.submit(self._fetch, adapter_id)

    def _fetch(self, adapter_id: str) -> None:
        try:
            result = self.cache.fetch(adapter_id)
        except Exception as err:
            result = err
        with self._cond:
            self._fetched.append((adapter_id, result))
            self._cond.notify_all()

    def _attach_fetched(self) -> None:
        with self._cond:
            fetched = [*self._pending_attach, *self._fetched]
            self._fetched.clear()
        self._pending_attach = []
        for adapter_id, result in fetched:
            if not isinstance(result, Exception):
                if self.batch is not None:
                    self.batch.close_adapters()  # the layers change: the hooks are rebuilt at the next step
                try:
                    self.cache.attach(adapter_id, result)
                except AdapterBusy:
                    self._pending_attach.append((adapter_id, result))
                    continue
                except Exception as err:
                    result = err
            with self._cond:
                jobs = self._parked.pop(adapter_id, [])
                if not isinstance(result, Exception):
                    self._waiting.extendleft(reversed(jobs))  # they arrived before those waiting now
            if isinstance(result, Exception):
                error = result if isinstance(result, RequestError) else generation_error(result)
                for job in jobs:
                    job.send(error)
