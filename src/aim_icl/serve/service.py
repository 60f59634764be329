"""The model service, with no HTTP in it: prompts from chats and tasks, the bank, batched generation, counters.

Requests become `GenerationJob`s: data, no code. `prepare(job)` encodes a job's prompt on the CPU before it is
queued (images, template, processor: in the prompt pipeline's workers, `aim_icl.core.pipeline`), so the model
worker (`worker.py`) only runs the model: it hands every waiting job to `generate(jobs)` at once, where the demos'
fused vectors are written in (`aim` demos through the Demonstration Bank by content key) and the batch is answered
in one left-padded call (`aim_icl.core.batching`), each row with its own sampling, stop strings and token limit.
Tasks that pick their demos per query from the bank are the exception: picking needs the model, so their prompts
are built on the worker. A job is answered as soon as its choices are finished; a streaming job hears of every
piece of text as it is generated.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from transformers import LogitsProcessorList, StoppingCriteriaList

from aim_icl.bank import DemoBank
from aim_icl.core.aim import AIM
from aim_icl.core.batching import eos_ids, generate_batch
from aim_icl.core.demo import Demo, Query
from aim_icl.core.modes import mode_of
from aim_icl.core.prompt import Encoded, PromptEncoder, laid_out
from aim_icl.errors import AIMError
from aim_icl.registry import Registry
from aim_icl.serve.chat import Conversation
from aim_icl.serve.choices import Choice, ChoiceTracker
from aim_icl.serve.errors import RequestError
from aim_icl.serve.metrics import Metrics
from aim_icl.serve.sampling import Generation, RowSampler, rows_of
from aim_icl.serve.tasks import ServedTask, TaskSpec

logger = logging.getLogger(__name__)


@dataclass
class PromptRequest:
    """What a request's prompt is made of: its query (demos as the prompt lays them out), its mode, the demos to
    fuse (`aim`: looked up in or added to the bank on the worker) and its task; `encoded` once prepared."""

    query: Query
    mode: str
    demos: list[Demo] = field(default_factory=list)
    task: ServedTask | None = None
    encoded: Encoded | None = None

    @property
    def selects(self) -> bool:
        """Whether the task picks demos per query from the bank (on the worker: picking needs the model)."""
        return self.task is not None and self.task.strategy != "fixed"


@dataclass
class Prompt:
    """A request's prompt as built on the worker: the model inputs and what went into them."""

    inputs: dict[str, Any]
    mode: str
    demo_keys: list[str]
    demos: int
    bank_hits: int
    bank_misses: int = 0
    prefix_cache: Any = None  # the task's PrefixCache: this query runs alone through it

    @property
    def tokens(self) -> int:
        return self.inputs["input_ids"].shape[1]


@dataclass
class Answer:
    """What a request gets back: its choices and what the prompt cost."""

    choices: list[Choice]
    mode: str
    prompt_tokens: int
    demos: int
    bank_hits: int
    cached_prompt_tokens: int = 0
    demo_keys: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)


class StreamSink(Protocol):
    """Where a streaming job's events go, from the worker thread."""

    def start(self) -> None: ...  # the prompt is built: generation begins

    def text(self, choice: int, piece: str) -> None: ...

    def end(self, choice: int, reason: str) -> None: ...


@dataclass(eq=False)
class GenerationJob:
    """One request for the batched generator: its prompt (prepared before it is queued) and its sampling."""

    request: PromptRequest
    generation: Generation
    deadline: float
    sink: StreamSink | None = None
    future: Future = field(default_factory=Future)
    abandoned: bool = False  # set by the request when its client left or timed out
    started: bool = False

    @property
    def rows(self) -> int:
        return self.generation.n


class ModelService:
    """Answers chats and task queries with one AIM; demos go through the Demonstration Bank by content key."""

    def __init__(
        self,
        aim: AIM,
        bank_path: str | Path | None = None,
        model_name: str = "aim",
        bank_over: str | Path | None = None,
        workers: int = 0,
    ):
        """`bank_over`: a shared bank read but never written (server replicas); `bank_path` then holds what this
        service adds (`aim_icl.bank.layered`). `workers`: processes preparing prompts (0: the calling thread)."""
        self.aim = aim
        self.pool = aim.pipeline(workers)  # made here, once: requests' threads share it
        self.model_name = model_name
        self.metrics = Metrics()
        self.tasks: Registry[ServedTask] = Registry("task")
        self._bank_path, self._bank_over = bank_path, bank_over
        self._bank: DemoBank | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._eos_ids = eos_ids(aim)
        self.max_tasks: int | None = None  # tasks registered at once (the server's config sets the limits)
        self.max_bank_demos: int | None = None  # past this, requests' demos are fused without being stored

    @property
    def bank(self) -> DemoBank:
        """Opened on first use, on the worker thread (SQLite connections stay on the thread that opened them)."""
        if self._bank is None:
            path = self._bank_path
            if path is None:  # no bank given: a bank for this server's lifetime
                self._tmp = tempfile.TemporaryDirectory(prefix="aim-serve-")
                path = Path(self._tmp.name) / "bank.sqlite"
            self._bank = DemoBank(path, self.aim, over=self._bank_over)
        return self._bank

    def close(self) -> None:
        if self._bank is not None:
            self._bank.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def sampling_defaults(self) -> tuple[float, float]:
        """(temperature, top_p) for requests that name none: the model's generation config (greedy unless it samples)."""
        config = self.aim.model.generation_config
        if not config.do_sample:
            return 0.0, 1.0
        return float(config.temperature or 1.0), float(config.top_p or 1.0)

    # -- jobs (any thread but the worker's) -------------------------------------------------------------------

    def chat_job(
        self,
        chat: Conversation,
        mode: str,
        generation: Generation,
        deadline: float,
        sink: StreamSink | None = None,
    ) -> GenerationJob:
        rules = mode_of(mode)
        demos = chat.demos if rules.demos else []
        query = Query(chat.image, chat.text, laid_out(demos, mode))
        request = PromptRequest(query, mode, demos if rules.fused else [])
        return GenerationJob(request, generation, deadline, sink)

    def predict_job(
        self, name: str, image, question: str, generation: Generation, deadline: float
    ) -> GenerationJob:
        task = self._task(name)
        text = task.template.format(question=question)
        fixed = task.cache.demos if task.cache else task.demos
        demos = laid_out(fixed, task.mode) if task.strategy == "fixed" else []
        return GenerationJob(
            PromptRequest(Query(image, text, demos), task.mode, task=task), generation, deadline
        )

    def prepare(self, job: GenerationJob) -> GenerationJob:
        """Encode the job's prompt on the CPU, in the prompt pipeline (blocks this thread until it is ready); a
        prompt past the model's context is refused here, before it takes a place in the queue."""
        if not job.request.selects:
            job.request.encoded = self._encode(job.request)
        return job

    def _encode(self, request: PromptRequest) -> Encoded:
        return self.pool.submit(PromptEncoder.prepare, [request.query], request.mode).result()

    # -- the worker's side ---------------------------------------------------------------------------------------

    def generate(self, jobs: list[GenerationJob]) -> None:
        """Answer `jobs` (the worker's batch): one batch for plain prompts, prefix-cached prompts one by one."""
        ready = [(job, prompt) for job in jobs if (prompt := self._prepare(job)) is not None]
        plain = [(job, prompt) for job, prompt in ready if prompt.prefix_cache is None]
        groups = [plain] if plain else []
        groups += [[(job, prompt)] for job, prompt in ready if prompt.prefix_cache is not None]
        for group in groups:
            self._generate(group)

    def _prepare(self, job: GenerationJob) -> Prompt | None:
        if (
            job.started and job.sink is not None
        ):  # a retry after its batch failed: streamed text cannot be unsent
            job.future.set_exception(RuntimeError("generation failed while the answer was streaming"))
            return None
        try:
            prompt = self._prompt(job.request)
            self._room(prompt)
        except Exception as err:  # a bad request fails alone, before the batch runs
            job.future.set_exception(err)
            return None
        job.started = True
        if job.sink is not None:
            job.sink.start()
        return prompt

    def _generate(self, group: list[tuple[GenerationJob, Prompt]]) -> None:
        choices = [c for job, prompt in group for c in self._choices(job, prompt)]
        tracker = ChoiceTracker(choices, self.aim.encoder.tokenizer, self._eos_ids)
        sampler = RowSampler([row for job, _ in group for row in rows_of(job.generation)])
        kwargs = {
            "max_new_tokens": max(c.max_tokens for c in choices),
            "logits_processor": LogitsProcessorList([sampler]),
            "stopping_criteria": StoppingCriteriaList([tracker]),
            "max_time": max(_remaining(job.deadline) for job, _ in group),
        }
        first = group[0][1]
        if first.prefix_cache is not None:
            first.prefix_cache.generate_from(first.inputs, **kwargs)
        else:
            inputs = [prompt.inputs for job, prompt in group for _ in range(job.generation.n)]
            generate_batch(self.aim, inputs, **kwargs)
        tracker.close()

    def _room(self, prompt: Prompt) -> int | None:
        """New tokens that fit in the model's context after the prompt (None: the context is unknown)."""
        context = self.aim.backbone.max_length
        if context is None:
            return None
        if prompt.tokens >= context:
            raise RequestError(
                f"the prompt's {prompt.tokens} tokens fill the model's context of {context}; "
                "leaves no room for an answer: use fewer or shorter demos"
            )
        return context - prompt.tokens

    def _choices(self, job: GenerationJob, prompt: Prompt) -> list[Choice]:
        """The job's n choices, each capped at what fits in the context (then it ends with finish_reason
        'length'); the job is answered when the last one ends."""
        generation, open_choices = job.generation, [job.generation.n]
        room = self._room(prompt)
        max_tokens = generation.max_tokens if room is None else min(generation.max_tokens, room)
        choices = []

        def ended(index: int, choice: Choice) -> None:
            if job.sink is not None:
                job.sink.end(index, choice.finish_reason)
            open_choices[0] -= 1
            if open_choices[0] == 0:
                self._deliver(job, prompt, choices)

        for index in range(generation.n):
            on_text = None if job.sink is None else functools.partial(job.sink.text, index)
            choices.append(
                Choice(
                    max_tokens,
                    generation.stop,
                    on_text,
                    functools.partial(ended, index),
                    abandoned=lambda: job.abandoned,
                )  # fmt: skip
            )
        return choices

    def _deliver(self, job: GenerationJob, prompt: Prompt, choices: list[Choice]) -> None:
        cached = 0 if prompt.prefix_cache is None else prompt.prefix_cache.length
        answer = Answer(
            choices, prompt.mode, prompt.tokens, prompt.demos, prompt.bank_hits, cached, prompt.demo_keys
        )
        self.metrics.observe_answer(
            prompt.mode, prompt.tokens, answer.completion_tokens, prompt.bank_hits, prompt.bank_misses
        )
        if not job.future.done():
            job.future.set_result(answer)

    # -- prompts (the worker's thread) -------------------------------------------------------------------------

    def _prompt(self, request: PromptRequest) -> Prompt:
        """The model inputs of a prepared request: `aim` demos fused (from the bank) and written in."""
        if request.selects:
            return self._selected_prompt(request)
        if request.encoded is None:  # not prepared before it was queued: here, then
            request.encoded = self._encode(request)
        task, demos = request.task, request.demos
        if task is not None:  # a fixed task: its demos are the prefix cache's (fused once) or its own
            rules = mode_of(task.mode)
            fused = [task.cache.demos] if task.cache is not None and rules.fused else None
            inputs = self.aim.finish(request.encoded, fused)
            hits = 0 if rules.demo_images else len(task.demos)
            return Prompt(inputs, task.mode, task.demo_keys, len(task.demos), hits, prefix_cache=task.cache)
        if not mode_of(request.mode).fused or not demos:
            inputs = self.aim.finish(request.encoded)
            return Prompt(inputs, request.mode, [], len(request.query.demos), 0)
        keys = [self.bank.key(d) for d in demos]
        states, hits = self._bank_states(demos, keys)
        inputs = self.aim.finish(request.encoded, [self.aim.fuse(states)])
        return Prompt(inputs, "aim", keys, len(demos), hits, len(demos) - hits)

    def _bank_states(self, demos: list[Demo], keys: list[str]) -> tuple[list, int]:
        """Stored states of the demos, reading only those the bank lacks; also how many were already stored. When
        the new ones would take the bank past `max_bank_demos` they stay unstored: fused as fresh demos."""
        stored = self.bank.store.existing(keys)
        hits = sum(k in stored for k in keys)
        if self._bank_room(len(set(keys) - stored)):
            self.bank.write(demos, keys)
            stored = set(keys)
        return [self.bank.get(k) if k in stored else d for k, d in zip(keys, demos)], hits

    def _bank_room(self, new: int) -> bool:
        return self.max_bank_demos is None or len(self.bank) + new <= self.max_bank_demos

    def _selected_prompt(self, request: PromptRequest) -> Prompt:
        """A query whose demos the bank picks for it (by its image or text), built here."""
        task, query = request.task, request.query
        demos = self.bank.select(query.image, task.k, task.strategy, query_text=query.text)
        inputs = self.aim.build_inputs(query.image, query.text, demos, task.mode)
        return Prompt(inputs, task.mode, [d.key for d in demos], len(demos), len(demos))

    # -- tasks -------------------------------------------------------------------------------------------------

    def create_task(self, spec: TaskSpec) -> ServedTask:
        request = spec.request
        if request.name in self.tasks:
            raise RequestError(f"task {request.name!r} already exists; pick another name", "conflict")
        if self.max_tasks is not None and len(self.tasks.names()) >= self.max_tasks:
            raise RequestError(
                f"this server holds its limit of {self.max_tasks} tasks; use one of them", "full"
            )
        rules = mode_of(request.mode)
        if rules.demo_images:  # kept as they are, not read into the bank: their texts are checked here
            for demo in spec.uploaded:
                self.aim.encoder.text_ids(demo.text)
        elif not self._bank_room(len(spec.uploaded)):
            raise RequestError(
                f"the bank holds {len(self.bank)} demos, and at most {self.max_bank_demos}: "
                "name demos it holds (demo_keys) instead of uploading new ones",
                "full",
            )
        keys = [] if rules.demo_images else self.bank.add(spec.uploaded, progress=False)
        missing = [k for k in request.demo_keys if k not in self.bank]
        if missing:
            raise RequestError(f"no demo with key {missing[0]!r} in the bank", "not_found")
        keys += request.demo_keys
        task = ServedTask(
            request.name, request.mode, request.strategy, request.k or len(keys), request.template, keys
        )
        if request.strategy == "fixed":
            task.demos = spec.uploaded if rules.demo_images else [self.bank.get(k) for k in keys]
            task.cache = self._prefix_cache(task.demos, request.mode) if rules.prefix_cached else None
        elif len(self.bank) < task.k:
            raise RequestError(f"the bank holds {len(self.bank)} demos, fewer than k={task.k}")
        self.tasks.register(task.name, task)
        return task

    def _task(self, name: str) -> ServedTask:
        try:
            return self.tasks.get(name)
        except AIMError as err:
            raise RequestError(str(err), "not_found") from None

    def _prefix_cache(self, demos: list, mode: str):
        from aim_icl.core.prefix_cache import PrefixCache

        try:
            return PrefixCache(self.aim, demos, mode)
        except AIMError as err:  # e.g. families whose query image precedes the demos
            logger.warning("task served without a prefix cache: %s", err)
            return None


def _remaining(deadline: float) -> float:
    """Seconds left for generation (transformers stops at `max_time`); a timed-out request wastes little."""
    return max(deadline - time.monotonic(), 0.01)
