"""The model service, with no HTTP in it: prompts from chats and tasks, the bank, named tasks, counters.

Requests become `GenerationJob`s: data, no code. `prepare(job)` encodes a job's prompt on the CPU before it is
queued (images, template, processor: in the prompt pipeline's workers, `aim_icl.core.pipeline`), so the engine
(`engine.py`) only runs the model: when a job joins the rows in flight, `prompt(job)` writes the demos' fused vectors
in (`aim` demos through the Demonstration Bank by content key) and the engine prefills it. Tasks that pick their
demos per query from the bank are the exception: picking needs the model, so their prompts are built there.

A service is made with its `ServerConfig` (limits on tasks and bank demos). Named tasks (`tasks.TaskRegistry`) are
read from any thread; they change on the engine's thread, and with a bank file they are stored in it
(`bank.tasks.TaskTable`), loaded at start and kept in step with other processes on the same file (replicas).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aim_icl.bank import DemoBank
from aim_icl.core.aim import AIM
from aim_icl.core.demo import Demo, Query
from aim_icl.core.modes import mode_of
from aim_icl.core.prompt import Encoded, PromptEncoder, is_per_token, laid_out
from aim_icl.errors import AIMError
from aim_icl.serve.chat import Conversation
from aim_icl.serve.config import ServerConfig
from aim_icl.serve.errors import RequestError
from aim_icl.serve.events import Answer, PromptInfo
from aim_icl.serve.metrics import Metrics
from aim_icl.serve.sampling import Generation
from aim_icl.serve.tasks import ServedTask, TaskRegistry, TaskSpec

logger = logging.getLogger(__name__)

RECENT_DEMOS = 512  # stored demos whose states the service keeps in memory (the bank reads the others again)
MIN_HEAD = 8  # a chat template head shorter than this is read about as fast as it is copied: not cached


@dataclass
class PromptRequest:
    """What a request's prompt is made of: its query (demos as the prompt lays them out), its mode, the demos to
    fuse (`aim`: looked up in or added to the bank on the engine) and its task; `encoded` once prepared."""

    query: Query
    mode: str
    demos: list[Demo] = field(default_factory=list)
    task: ServedTask | None = None
    encoded: Encoded | None = None

    @property
    def selects(self) -> bool:
        """Whether the task picks demos per query from the bank (on the engine: picking needs the model)."""
        return self.task is not None and self.task.strategy != "fixed"


@dataclass
class Prompt:
    """A request's prompt as the engine reads it: model inputs, the cached prefix they start with (a task's fixed
    demos), what went into them, and the new tokens that fit in the context after it."""

    inputs: dict[str, Any]
    info: PromptInfo
    max_tokens: int
    prefix: Any = None  # serve.prefix.RowPrefix


@dataclass(eq=False)
class GenerationJob:
    """One request for the engine: its prompt (prepared before it is queued), its sampling, whether it streams.

    `emit` receives its events (`serve.events`) on the engine's thread; `cancelled` (its client left or timed out)
    makes the engine drop its rows at the next step."""

    request: PromptRequest
    generation: Generation
    deadline: float
    stream: bool = False
    emit: Any = None
    cancelled: bool = False
    queued_at: float = 0.0

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
        *,
        config: ServerConfig | None = None,
        temporary_bank: bool = False,
    ):
        """`bank_path`: the bank file (None: a temporary one; tasks then live in memory). `bank_over`: a shared bank
        read but never written for demos (server replicas): `bank_path` then holds what this service reads, and
        tasks are stored in the shared file (`temporary_bank`: one that goes with the server). `workers`: processes
        preparing prompts (0: the calling thread)."""
        self.aim = aim
        self.config = config or ServerConfig()
        self.pool = aim.pipeline(workers)  # made here, once: requests' threads share it
        self.model_name = model_name
        self.metrics = Metrics()
        self.tokenizer = aim.encoder.tokenizer
        self.end_tokens = end_tokens(aim)
        task_file = bank_over or bank_path
        self.tasks = TaskRegistry(
            None if task_file is None else Path(task_file),
            persistent=task_file is not None and not temporary_bank,
        )
        self._banks = _Banks(bank_path, bank_over)
        # on the engine thread only: stored states (and fused tokens) of demos chats sent lately, and the cached
        # template head of each kind of chat prompt inputs (`_chat_head`)
        self._recent: dict[str, Any] = {}
        self._heads: dict[tuple, Any] = {}

    def with_config(self, config: ServerConfig) -> ModelService:
        """The same service (model, bank, tasks, counters) under another config."""
        other = copy.copy(self)
        other.config = config
        return other

    @property
    def bank(self) -> DemoBank:
        """Opened on first use, on the engine's thread (SQLite connections stay on the thread that opened them)."""
        return self._banks.open(self.aim)

    def start(self) -> None:
        """On the engine's thread, before any request: the stored tasks, loaded."""
        if self.tasks.path is not None:
            self.bank  # noqa: B018 -- the bank file (created if new) holds the tasks
            self.tasks.open()
            self.sync_tasks()

    def close(self) -> None:
        self.tasks.close()
        self._banks.close()

    def sampling_defaults(self) -> tuple[float, float]:
        """(temperature, top_p) for requests that name none: the model's generation config (greedy unless it samples)."""
        config = self.aim.model.generation_config
        if not config.do_sample:
            return 0.0, 1.0
        return float(config.temperature or 1.0), float(config.top_p or 1.0)

    # -- jobs (any thread but the engine's) ---------------------------------------------------------------------

    def chat_job(
        self, chat: Conversation, mode: str, generation: Generation, deadline: float, stream: bool = False
    ) -> GenerationJob:
        rules = mode_of(mode)
        demos = chat.demos if rules.demos else []
        query = Query(chat.image, chat.text, laid_out(demos, mode))
        request = PromptRequest(query, mode, demos if rules.fused else [])
        return GenerationJob(request, generation, deadline, stream)

    def predict_job(
        self, name: str, image, question: str, generation: Generation, deadline: float
    ) -> GenerationJob:
        task = self.task(name)
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

    # -- the engine's side ---------------------------------------------------------------------------------------

    def prompt(self, job: GenerationJob) -> Prompt:
        """The model inputs of a prepared job, and how many new tokens it may take (its max_tokens, capped at
        what fits in the model's context)."""
        inputs, info, prefix = self._inputs(job.request)
        room = self._room(info.tokens)
        limit = job.generation.max_tokens if room is None else min(job.generation.max_tokens, room)
        return Prompt(inputs, info, limit, prefix)

    def answered(self, answer: Answer) -> None:
        info = answer.prompt
        self.metrics.observe_answer(
            info.mode, info.tokens, answer.completion_tokens, info.bank_hits, info.bank_misses
        )

    def _room(self, tokens: int) -> int | None:
        """New tokens that fit in the model's context after the prompt (None: the context is unknown)."""
        layout = self.aim.encoder.layout
        if not layout.fits(tokens, 1):
            raise RequestError(
                f"the prompt's {tokens} tokens fill the model's context of {layout.max_length}; "
                "leaves no room for an answer: use fewer or shorter demos"
            )
        return layout.room(tokens)

    def _inputs(self, request: PromptRequest) -> tuple[dict, PromptInfo, Any]:
        """`aim` demos fused (from the bank) and written in; a fixed task's demos are its prefix's."""
        if request.selects:
            return self._selected_inputs(request)
        if request.encoded is None:  # not prepared before it was queued: here, then
            request.encoded = self._encode(request)
        task, demos = request.task, request.demos
        tokens = request.encoded.inputs["input_ids"].shape[1]
        if task is not None:  # a fixed task: its demos are the prefix cache's (fused once) or its own
            rules = mode_of(task.mode)
            fused = [task.cache.demos] if task.cache is not None and rules.fused else None
            hits = 0 if rules.demo_images else len(task.demos)
            info = PromptInfo(task.mode, tokens, len(task.demos), hits, demo_keys=task.demo_keys)
            return self.aim.finish(request.encoded, fused), info, task.cache
        if not mode_of(request.mode).fused or not demos:
            info = PromptInfo(request.mode, tokens, len(request.query.demos), 0)
            inputs = self.aim.finish(request.encoded)
            return inputs, info, self._chat_head(request.mode, inputs)
        keys = [self.bank.key(d) for d in demos]
        states, hits = self._bank_states(demos, keys)
        if any(isinstance(d, Demo) for d in states):  # unstored (the bank is full): read and fused here
            fused = self.aim.fuse(states)
        else:
            fused = [self._fused(key) for key in keys]
        inputs = self.aim.finish(request.encoded, [fused])
        return (
            inputs,
            PromptInfo("aim", tokens, len(demos), hits, len(demos) - hits, keys),
            self._chat_head("aim", inputs),
        )

    def _bank_states(self, demos: list[Demo], keys: list[str]) -> tuple[list, int]:
        """Stored states of the demos, reading only those the bank lacks; also how many were already stored. When
        the new ones would take the bank past `max_bank_demos` they stay unstored: fused as fresh demos."""
        recent = self._recent
        stored = {k for k in keys if k in recent}
        stored |= self.bank.store.existing([k for k in keys if k not in stored])
        hits = sum(k in stored for k in keys)
        new = len(set(keys) - stored)
        if new and self._bank_room(new):
            self.bank.write(demos, keys)
            stored = set(keys)
        return [self._stored(k) if k in stored else d for k, d in zip(keys, demos)], hits

    def _stored(self, key: str):
        """A stored demo's states, from memory when it was asked for lately (a key's states never change)."""
        return self._recent_demo(key)[0]

    def _fused(self, key: str):
        """A stored demo's fused tokens, projected once while it stays in memory (the projector is fixed)."""
        states, fused = self._recent_demo(key)
        if fused is None:
            fused = self._recent[key][1] = self.aim.fuse([states])[0]
        return fused

    def _recent_demo(self, key: str) -> list:
        """[states, fused tokens or None] of a stored demo, kept for the RECENT_DEMOS asked for last."""
        entry = self._recent.pop(key, None) or [self.bank.get(key), None]
        self._recent[key] = entry  # the most recent last
        if len(self._recent) > RECENT_DEMOS:
            self._recent.pop(next(iter(self._recent)))
        return entry

    def _bank_room(self, new: int) -> bool:
        return len(self.bank) + new <= self.config.max_bank_demos

    def _selected_inputs(self, request: PromptRequest) -> tuple[dict, PromptInfo, None]:
        """A query whose demos the bank picks for it (by its image or text), built here."""
        task, query = request.task, request.query
        demos = self.bank.select(query.image, task.k, task.strategy, query_text=query.text)
        inputs = self.aim.build_inputs(query.image, query.text, demos, task.mode)
        keys = [d.key for d in demos]
        info = PromptInfo(task.mode, inputs["input_ids"].shape[1], len(demos), len(demos), demo_keys=keys)
        return inputs, info, None

    # -- tasks (created, deleted and synced on the engine's thread; read anywhere) -------------------------------

    def task(self, name: str) -> ServedTask:
        task = self.tasks.get(name)
        if task is None:
            raise RequestError(f"unknown task {name!r}; create it with POST /v1/tasks", "not_found")
        return task

    def create_task(self, spec: TaskSpec) -> ServedTask:
        """Read the task's new demos, store them with the task (in the bank file when there is one), register it."""
        request = spec.request
        self.sync_tasks()  # another process (replica) may have taken the name
        if request.name in self.tasks:
            raise RequestError(f"task {request.name!r} already exists; pick another name", "conflict")
        if len(self.tasks) >= self.config.max_tasks:
            raise RequestError(
                f"this server holds its limit of {self.config.max_tasks} tasks; use one of them", "full"
            )
        rules = mode_of(request.mode)
        keys, rows = self._task_demos(spec)
        task = ServedTask(
            request.name, request.mode, request.strategy, request.k or len(keys), request.template, keys
        )
        by_key = {row.key: row.states for row in rows}
        if request.strategy == "fixed":
            stored = [by_key[k] if k in by_key else self.bank.get(k) for k in keys]
            task.demos = spec.uploaded if rules.demo_images else stored
        elif len(self.bank) + sum(row.key not in self.bank for row in rows) < task.k:
            raise RequestError(f"the bank holds {len(self.bank)} demos, fewer than k={task.k}")
        self.tasks.save(task, rows, self.bank)
        self._with_cache(task)
        return task

    def _task_demos(self, spec: TaskSpec) -> tuple[list[str], list]:
        """The task's demo keys (uploads read, not stored yet) and the rows to store with it."""
        request = spec.request
        if mode_of(
            request.mode
        ).demo_images:  # kept as they are, not read into the bank: their texts are checked
            for demo in spec.uploaded:
                self.aim.encoder.text_ids(demo.text)
            return [], []
        if not self._bank_room(len(spec.uploaded)):
            raise RequestError(
                f"the bank holds {len(self.bank)} demos, and at most {self.config.max_bank_demos}: "
                "name demos it holds (demo_keys) instead of uploading new ones",
                "full",
            )
        keys, rows = self.bank.rows_for(spec.uploaded)
        missing = [k for k in request.demo_keys if k not in self.bank]
        if missing:
            raise RequestError(f"no demo with key {missing[0]!r} in the bank", "not_found")
        keys += request.demo_keys
        read = {
            row.key for row in rows
        }  # stored with the task too: a replica's own file is not the shared one
        return keys, rows + [self.bank.store.get(k) for k in dict.fromkeys(keys) if k not in read]

    def delete_task(self, name: str) -> None:
        self.sync_tasks()
        if not self.tasks.delete(name):
            raise RequestError(f"unknown task {name!r}; GET /v1/tasks lists them", "not_found")

    def sync_tasks(self) -> None:
        """Bring the registry in step with the task table (a replica's new or deleted tasks); cheap when nothing
        changed."""
        for task in self.tasks.sync(self.bank):
            self._with_cache(task)

    def _with_cache(self, task: ServedTask) -> None:
        if task.strategy == "fixed" and mode_of(task.mode).prefix_cached:
            task.cache = self._prefix_cache(task.demos, task.mode)

    def _chat_head(self, mode: str, inputs: dict):
        """The prefix every chat prompt starts with: the chat template's head (a system prompt and the user turn's
        opening), read once and copied into each joining row, as task queries copy their demos. One per set of
        per-token inputs (ids alone, or with fused embeddings: the cached positions compare key by key); None where
        the mode is not prefix-cached (`icl`), the family puts the query image first, or the head is under
        `MIN_HEAD` tokens."""
        if not mode_of(mode).prefix_cached or self.aim.backbone.family.images_first:
            return None
        kind = tuple(sorted(k for k in inputs if is_per_token(inputs, k)))
        if kind not in self._heads:
            head = self._prefix_cache([], "zero")
            self._heads[kind] = head if head is not None and head.expected_length >= MIN_HEAD else None
        return self._heads[kind]

    def _prefix_cache(self, demos: list, mode: str):
        from aim_icl.serve.prefix import RowPrefix

        try:
            return RowPrefix(self.aim, demos, mode)
        except AIMError as err:  # e.g. families whose query image precedes the demos
            logger.warning("task served without a prefix cache: %s", err)
            return None


class _Banks:
    """The bank a service opens on first use (on the engine's thread), and the temporary directory of one made
    for the server's lifetime; shared by `with_config` copies."""

    def __init__(self, path: str | Path | None, over: str | Path | None):
        self.path, self.over = path, over
        self.bank: DemoBank | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def open(self, aim: AIM) -> DemoBank:
        if self.bank is None:
            path = self.path
            if path is None:  # no bank given: a bank for this server's lifetime
                self._tmp = tempfile.TemporaryDirectory(prefix="aim-serve-")
                path = Path(self._tmp.name) / "bank.sqlite"
            self.bank = DemoBank(path, aim, over=self.over)
        return self.bank

    def close(self) -> None:
        if self.bank is not None:
            self.bank.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def end_tokens(aim: AIM) -> frozenset[int]:
    """Every token that ends an answer: the generation config's end tokens and the tokenizer's."""
    eos = aim.model.generation_config.eos_token_id
    ids = set(eos.tolist() if hasattr(eos, "tolist") else eos if isinstance(eos, list) else [eos])
    ids.add(aim.encoder.tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids if i is not None)
