"""The jobs and events the routes read, and ``--scheduler static``: one mixed batch of requests at a time.

(The default scheduler, `peft_hybrid.serve.scheduler`, batches decoder steps instead of requests.)

A request becomes a `Job` on an asyncio queue. The worker takes the first job, waits until the
batch is full or ``max_wait_ms`` has passed since that job arrived, splits the jobs into groups
that decode with the same settings (`GenerateRequest.sampling_key`), and runs each group as one
batch in a worker thread (the event loop keeps serving meanwhile). Rows of one group may name
different adapters: `peft_hybrid.modeling.model.HybridModel.generate` runs them in one call with
per-row prompts and LoRA, and merges LoRA when every row shares an adapter.

Every event a job gets (a token, its end, an error) is sent from the worker thread onto the
job's own asyncio queue, which the HTTP handler reads. A full queue refuses new jobs at once
(503 with ``Retry-After``); a job whose client went away is dropped, or stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from peft_hybrid.serve.requests import GenerateRequest, RequestError

RETRY_AFTER_S = 1


@dataclasses.dataclass
class Final:
    """How a job ended: its text, why it stopped, how many tokens it generated."""

    generated_text: str
    finish_reason: str
    generated_tokens: int
    seed: int | None
    input_length: int


@dataclasses.dataclass
class TokenEvent:
    """One generated token (TGI's ``{"id", "text", "logprob", "special"}``); ``final`` on the last one."""

    index: int
    token: dict[str, Any] | None  # None: the row ended without a new token
    final: Final | None = None


@dataclasses.dataclass
class Job:
    """One request on its way through the queue and the worker."""

    request: GenerateRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
    input_ids: list[int] | None = None  # set by `peft_hybrid.serve.engine.prepare`
    max_new_tokens: int | None = None
    cancelled: bool = False  # the client went away: drop the job, or stop its row
    finished: bool = False
    emitted: int = 0
    enqueued: float = dataclasses.field(default_factory=time.monotonic)

    def send(self, event: TokenEvent | RequestError) -> None:
        """Hand an event to the job's handler; safe to call from the worker thread."""
        self.record(event)
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def record(self, event: TokenEvent | RequestError) -> None:
        """What sending ``event`` says about the job (finished, events emitted), at once in the sender's thread."""
        if isinstance(event, RequestError) or event.final is not None:
            self.finished = True
        if isinstance(event, TokenEvent):
            self.emitted += 1


class Outbox:
    """Events of many jobs from one worker step, handed to each event loop in one wake-up.

    Waking an event loop from another thread writes to its self-pipe and schedules a callback:
    once per token of every row, that cost grows with the batch and keeps the loop busy
    while the worker steps. An event is recorded on its job at once (`Job.record`) and delivered,
    in the order sent, at `flush`.
    """

    def __init__(self) -> None:
        self._events: list[tuple[Job, TokenEvent | RequestError]] = []

    def send(self, job: Job, event: TokenEvent | RequestError) -> None:
        job.record(event)
        self._events.append((job, event))

    def flush(self) -> None:
        events, self._events = self._events, []
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for job, event in events:
            by_loop.setdefault(job.loop, []).append((job, event))
        for loop, batch in by_loop.items():
            loop.call_soon_threadsafe(_deliver, batch)


def _deliver(batch: list[tuple[Job, TokenEvent | RequestError]]) -> None:
    for job, event in batch:
        job.events.put_nowait(event)


def group_jobs(jobs: list[Job]) -> list[list[Job]]:
    """Jobs that decode with the same settings together, in arrival order of each group's first job."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.request.sampling_key(), []).append(job)
    return list(groups.values())


class Batcher:
    """The queue and its worker. ``run(jobs)`` generates one group, in the worker thread.

    Example:
        >>> batcher = Batcher(lambda jobs: None, max_batch_size=8, max_wait_ms=5, max_queue=64)
        >>> batcher.max_batch_size
        8
    """

    def __init__(
        self,
        run: Callable[[list[Job]], None],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="peft-hybrid-serve")
        self._task = asyncio.create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker (after the server has answered every request it accepted)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def call_in_worker(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the worker thread between batches (it may change the model's adapters)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def depth(self) -> int:
        """Jobs waiting for a batch (not counting the batch running now)."""
        return self._queue.qsize() if self._queue is not None else 0

    def submit(self, job: Job) -> None:
        """Queue ``job``, or refuse it with 503 when ``max_queue`` jobs are already waiting."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise RequestError(
                f"Model is overloaded: {self.max_queue} requests are already waiting; retry shortly.",
                status=503,
                error_type="overloaded",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            for group in group_jobs([job for job in jobs if not job.cancelled]):
                if self.on_batch is not None:
                    self.on_batch(len(group))
                await loop.run_in_executor(self._executor, self._run_safely, group)

    async def _collect(self) -> list[Job]:
        """The first waiting job, and those that arrive within ``max_wait_ms`` of it (up to the batch size)."""
        jobs = [await self._queue.get()]
        deadline = jobs[0].enqueued + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return jobs

    def _run_safely(self, jobs: list[Job]) -> None:
        """``run``, and whatever it leaves unanswered gets an error: no handler waits forever."""
        try:
            self.run(jobs)
        except Exception as err:  # the run's own per-row handling failed; answer every row still waiting
            error = RequestError(f"generation failed: {err}", status=500, error_type="generation")
            for job in jobs:
                if not job.finished:
                    job.send(error)
        finally:
            for job in jobs:
                if not job.finished and not job.cancelled:
                    job.send(RequestError("generation ended without a result", status=500, error_type="generation"))
