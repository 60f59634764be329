"""One model worker thread behind a bounded queue, taking waiting requests in batches.

Everything that touches the model or the bank runs on this thread: torch and SQLite connections stay on one thread.
`submit(fn, *args)` runs a call alone. `submit_batched(handler, job)` lets the worker take every waiting job of the
same handler at once (up to `max_batch_size` rows) and call `handler(jobs)`, which resolves each job's future, as
early as it likes. Nothing waits to fill a batch: a batch is whatever queued while the previous one ran, so a lone
request starts at once and throughput grows with concurrency. When a batch call fails, its unanswered jobs are
retried one by one, so a request that breaks a batch fails alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds as many waiting requests as it may; the client should retry later."""


class Job(Protocol):
    """What `submit_batched` takes: its future (resolved by the handler) and the batch rows it needs."""

    future: Future
    rows: int


@dataclass
class _Call:
    job: Any  # a Job, or the arguments of a lone call
    handler: Callable
    batched: bool
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def future(self) -> Future:
        return self.job.future

    @property
    def rows(self) -> int:
        return self.job.rows if self.batched else 1


@dataclass
class _Lone:
    args: tuple
    future: Future = field(default_factory=Future)


class ModelWorker:
    """Runs submitted work on one thread; at most `max_waiting` requests wait, more raise `QueueFull`.

    `on_batch(rows, waits)` hears of each batch started: its rows and how long each request waited.
    """

    def __init__(
        self,
        max_waiting: int = 8,
        max_batch_size: int = 1,
        on_batch: Callable[[int, list[float]], None] | None = None,
    ):
        self.max_waiting, self.max_batch_size, self.on_batch = max_waiting, max_batch_size, on_batch
        self._waiting: deque[_Call] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="aim-model-worker", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` alone; its result or exception lands in the returned future."""
        lone = _Lone(args)
        self._put(_Call(lone, fn, batched=False))
        return lone.future

    def submit_batched(self, handler: Callable[[list], None], job: Job) -> Future:
        """Queue `job` for `handler(jobs)`, batched with the other waiting jobs of the same handler."""
        self._put(_Call(job, handler, batched=True))
        return job.future

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self, timeout: float = 30.0) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)

    def _put(self, call: _Call) -> None:
        with self._ready:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull
            self._waiting.append(call)
            self._ready.notify()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closed:
                    self._ready.wait()
                if not self._waiting:  # closed and drained
                    return
                batch = self._take()
            batch = [
                c for c in batch if c.future.set_running_or_notify_cancel()
            ]  # drop calls whose client left
            if batch:
                self._run(batch)

    def _take(self) -> list[_Call]:
        """The oldest call, and with a batched one every waiting call of its handler that fits in the batch."""
        first = self._waiting.popleft()
        batch, rows = [first], first.rows
        if first.batched:  # same handler: `==`, as a bound method is a new object on every access
            for call in list(self._waiting):
                if call.batched and call.handler == first.handler and rows + call.rows <= self.max_batch_size:
                    self._waiting.remove(call)
                    batch.append(call)
                    rows += call.rows
        return batch

    def _run(self, batch: list[_Call]) -> None:
        if self.on_batch is not None:
            now = time.monotonic()
            self.on_batch(sum(c.rows for c in batch), [now - c.queued_at for c in batch])
        if not batch[0].batched:
            _resolve(batch[0].future, batch[0].handler, *batch[0].job.args)
            return
        try:
            batch[0].handler([c.job for c in batch])
        except BaseException as err:
            open_jobs = [c for c in batch if not c.future.done()]
            if len(batch) == 1 or not open_jobs:
                _fail(open_jobs, err)
                return
            logger.warning("a batch of %d failed (%s); retrying its requests one by one", len(batch), err)
            for call in open_jobs:
                self._run_alone(call)
        _fail([c for c in batch if not c.future.done()], RuntimeError("the model worker gave no answer"))

    def _run_alone(self, call: _Call) -> None:
        try:
            call.handler([call.job])
        except BaseException as err:
            _fail([call], err)


def _resolve(future: Future, fn: Callable, *args: Any) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as err:  # handed to the waiting request, which maps it to a response
        future.set_exception(err)


def _fail(calls: list[_Call], err: BaseException) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(err)
