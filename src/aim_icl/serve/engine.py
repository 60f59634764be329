"""The model worker: one thread that owns the model and the bank, and schedules generation per decoding step.

Everything that touches the model or the bank runs on this thread (torch and SQLite connections stay on one thread).
A generation job (`start(job)`) waits in a bounded queue; at every step the scheduler lets waiting jobs join the
rows in flight (up to `max_batch_size` rows; a job asking n choices is n rows, its prompt read once and its KV slot
copied), every row generates one token, and a row that ends leaves at once, freeing its slot for the next job:
- `continuous` (iteration-level, as vLLM, TGI and SGLang schedule): jobs join at the next step whenever there is
  room, so a request never waits for the longest answer of a batch it was not part of;
- `static`: jobs join only when no row is generating, so a batch runs until its last row ends (the comparison).
Each row keeps its own sampling, seed, stop strings, token limit and stream, and reports its job's events
(`serve.events`) through the job's `emit`, from this thread. A job whose client left or timed out is `cancelled`:
its rows leave at the next step. Lone calls (`submit(fn, *args)`: task creation, the playground's readout, closing
the bank) run between steps. A prompt that cannot be read fails its job alone; a failed step fails the jobs in it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from aim_icl.serve.choices import ChoiceText
from aim_icl.serve.config import ServerConfig
from aim_icl.serve.decoder import Decoder
from aim_icl.serve.events import Answer, Done, Failed, Finished, PromptInfo, Started, Text
from aim_icl.serve.sampling import TokenSampler, next_tokens, rows_of

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds as many waiting requests as it may; the client should retry later."""


@dataclass(eq=False)
class _Progress:
    """A job's choices while its rows generate."""

    job: Any  # service.GenerationJob
    prompt: PromptInfo
    choices: list[ChoiceText]
    open: int
    settings: list  # each choice's sampling (`sampling.RowSampling`)


@dataclass(eq=False)
class _Row:
    progress: _Progress
    choice: int
    sampler: TokenSampler
    last: int = 0  # the token it generated last

    @property
    def text(self) -> ChoiceText:
        return self.progress.choices[self.choice]


@dataclass(eq=False)
class _Call:
    fn: Callable
    args: tuple
    future: Future = field(default_factory=Future)


class Engine:
    """The step scheduler over one `ModelService` (see the module doc); `waiting` jobs and calls, `rows` in flight."""

    def __init__(self, service, config: ServerConfig):
        self.service = service
        self.queue_size, self.max_batch_size = config.queue_size, config.max_batch_size
        self.static = config.scheduler == "static"
        self.decoder = Decoder(service.aim, max(config.max_batch_size, config.max_n))
        self._calls: deque[_Call] = deque()
        self._jobs: deque = deque()
        self._rows: list[_Row] = []
        self._ready = threading.Condition()
        self._closed = False
        self.started: Future = Future()  # the service's start (bank, stored tasks) on this thread
        self._thread = threading.Thread(target=self._loop, name="aim-model-worker", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Calls and jobs waiting for the model (jobs whose clients left hold no place)."""
        return len(self._calls) + sum(not job.cancelled for job in self._jobs)

    @property
    def rows(self) -> int:
        return len(self._rows)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on the model's thread between steps; its result or exception lands in the future."""
        call = _Call(fn, args)
        self._put(self._calls, call)
        return call.future

    def start(self, job) -> None:
        """Queue a prepared generation job; its events go to `job.emit`. QueueFull when the queue is full."""
        job.queued_at = time.monotonic()
        self._put(self._jobs, job)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work; rows in flight finish, waiting jobs fail, then the thread ends."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)

    def _put(self, queue: deque, item) -> None:
        with self._ready:
            if self._closed or self.waiting >= self.queue_size:
                raise QueueFull
            queue.append(item)
            self._ready.notify()

    # -- the model's thread ---------------------------------------------------------------------------------------

    def _loop(self) -> None:
        _run(self.started, self.service.start)
        while True:
            with self._ready:
                while not (self._calls or self._jobs or self._rows or self._closed):
                    self._ready.wait()
                if self._closed and not (self._calls or self._rows):
                    break
                calls, joining = list(self._calls), self._admit()
                self._calls.clear()
            for call in calls:
                if call.future.set_running_or_notify_cancel():  # else its client gave up while it waited
                    _run(call.future, call.fn, *call.args)
            if joining:
                self._join(joining)
            if self._rows:
                self._step()
        for job in self._jobs:
            job.emit(Failed(RuntimeError("the server is stopping")))

    def _admit(self) -> list:
        """Waiting jobs that join now, oldest first: while their rows fit (a job alone always does)."""
        if self._closed or (self.static and self._rows):
            return []
        taken, rows = [], len(self._rows)
        while self._jobs:
            job = self._jobs[0]
            if not job.cancelled and rows and rows + job.rows > self.max_batch_size:
                break
            self._jobs.popleft()
            if not job.cancelled:
                taken.append(job)
                rows += job.rows
        return taken

    def _join(self, jobs: list) -> None:
        """Read the joining jobs' prompts into slots (prompts of one shape, after the same cached prefix if any, in
        one forward), copy each for its further choices, and take every row's first token. A job whose prompt
        cannot be read fails alone."""
        now, groups = time.monotonic(), {}
        for job in jobs:
            self.service.metrics.observe_wait(now - job.queued_at)
            try:
                prompt = self.service.prompt(job)
            except BaseException as err:  # this request's own problem
                job.emit(Failed(err))
                continue
            groups.setdefault((id(prompt.prefix), _shape(prompt.inputs)), []).append((job, prompt))
        for group in groups.values():
            try:
                first, logits, cached = self.decoder.join([p.inputs for _, p in group], group[0][1].prefix)
            except BaseException as err:
                for job, _ in group:
                    job.emit(Failed(err))
                continue
            starts = [
                self._first_row(job, prompt, first + i, cached) for i, (job, prompt) in enumerate(group)
            ]
            for (job, _), row, first_logits in zip(group, starts, logits):
                self._more_choices(job, row, first_logits)
                self._push(row, row.sampler.draw(first_logits))
        self._leave_finished()

    def _first_row(self, job, prompt, slot: int, cached: int) -> _Row:
        """The row of the job's first choice, in its slot; the job hears its prompt was read."""
        generation = job.generation
        choices = [
            ChoiceText(
                self.service.tokenizer,
                self.service.end_tokens,
                prompt.max_tokens,
                generation.stop,
                job.stream,
            )
            for _ in range(generation.n)
        ]
        info = replace(prompt.info, cached_tokens=cached)
        progress = _Progress(job, info, choices, generation.n, rows_of(generation))
        job.emit(Started(info))
        assert slot == len(self._rows)
        row = _Row(progress, 0, TokenSampler(progress.settings[0]))
        self._rows.append(row)
        return row

    def _more_choices(self, job, row: _Row, logits: torch.Tensor) -> None:
        """Rows for the job's other choices: copies of its first row's slot, each drawing its own first token."""
        for choice in range(1, job.generation.n):
            slot = self.decoder.fork(self._rows.index(row))
            assert slot == len(self._rows)
            other = _Row(row.progress, choice, TokenSampler(row.progress.settings[choice]))
            self._rows.append(other)
            self._push(other, other.sampler.draw(logits))

    def _step(self) -> None:
        """One token for every row in flight."""
        for slot in reversed(range(len(self._rows))):  # clients gone: their rows leave before the step
            if self._rows[slot].progress.job.cancelled:
                self._leave(slot)
        if not self._rows:
            return
        tokens = torch.tensor([row.last for row in self._rows])
        try:
            logits = self.decoder.step(tokens)
        except BaseException as err:
            self._fail_all(err)
            return
        self.service.metrics.observe_step(len(self._rows))
        for row, token in zip(self._rows, next_tokens(logits, [row.sampler for row in self._rows])):
            self._push(row, token)
        self._leave_finished()

    def _push(self, row: _Row, token: int) -> None:
        row.last = token
        progress, text = row.progress, row.text
        piece = text.add(token)
        emit = progress.job.emit
        if piece:
            emit(Text(row.choice, piece))
        if text.finished:
            emit(Finished(row.choice, text.finish_reason))
            progress.open -= 1
            if progress.open == 0:
                answer = Answer(progress.choices, progress.prompt)
                self.service.answered(answer)
                emit(Done(answer))

    def _leave_finished(self) -> None:
        for slot in reversed(
            range(len(self._rows))
        ):  # from the end: a moved row comes from past every slot left
            if self._rows[slot].text.finished:
                self._leave(slot)

    def _leave(self, slot: int) -> None:
        moved = self.decoder.leave(slot)
        if moved != slot:
            self._rows[slot] = self._rows[moved]
        self._rows.pop()

    def _fail_all(self, err: BaseException) -> None:
        """A step failed: every job in it fails (no answer can be trusted), the slots start empty."""
        logger.error("a decoding step of %d rows failed: %s", len(self._rows), err)
        for job in {row.progress.job for row in self._rows}:
            job.emit(Failed(err))
        self._rows.clear()
        self.decoder = Decoder(self.decoder.aim, self.decoder.slots.max_rows)


def _shape(inputs: dict) -> tuple:
    """Prompts of one shape prefill together: every input of the same size and type (no padding needed)."""
    return tuple(
        sorted((k, tuple(v.shape), v.dtype) for k, v in inputs.items() if isinstance(v, torch.Tensor))
    )


def _run(future: Future, fn: Callable, *args: Any) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as err:  # handed to the waiting request, which maps it to a response
        future.set_exception(err)
