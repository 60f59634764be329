"""The model service, with no HTTP in it: chats parsed into demos + query, bank lookups, named tasks, counters.

Every method that touches the model or the bank runs on the model worker's thread (`app.py`); the `parse_*` and
`prepare_*` functions only validate and decode images, so they may run anywhere.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from aim_icl.bank import DemoBank
from aim_icl.core.aim import AIM
from aim_icl.core.demo import Demo
from aim_icl.errors import AIMError
from aim_icl.registry import Registry
from aim_icl.serve.errors import RequestError
from aim_icl.serve.images import ImagePolicy, fetch_image
from aim_icl.serve.metrics import Metrics
from aim_icl.serve.schemas import ChatMessage, TaskRequest

logger = logging.getLogger(__name__)

# a chat demonstration's text: the user's text of the example turn, then the assistant's answer
DEFAULT_DEMO_TEMPLATE = "{user} {assistant}"


@dataclass
class Conversation:
    """A chat as AIM sees it: demos from the example turns, then the query (the last user turn)."""

    demos: list[Demo]
    image: Image.Image | None
    text: str


@dataclass
class Answer:
    text: str
    mode: str
    prompt_tokens: int
    completion_tokens: int
    demos: int
    bank_hits: int
    cached_prompt_tokens: int = 0
    demo_keys: list[str] = field(default_factory=list)


@dataclass
class Task:
    """A registered task: fixed demos (with a prefix cache where the mode allows) or per-query selection."""

    name: str
    mode: str
    strategy: str
    k: int
    template: str
    demo_keys: list[str]
    demos: list = field(default_factory=list)  # fixed tasks: Demo (icl) or bank states
    cache: object | None = None  # PrefixCache for fixed demos in aim/text/zero mode


@dataclass
class TaskSpec:
    """A validated task request with its uploaded images decoded."""

    request: TaskRequest
    uploaded: list[Demo]


def parse_chat(
    messages: list[ChatMessage], policy: ImagePolicy, demo_template: str, max_demos: int
) -> Conversation:
    """Every earlier user turn with an image plus the assistant answer after it is one demo; the last user turn is
    the query. System (and developer) text goes before the query text."""
    if messages[-1].role != "user":
        raise RequestError("the last message must be the user's question")
    system = [_texts(m) for m in messages if m.role in ("system", "developer")]
    turns = [m for m in messages if m.role in ("user", "assistant")]
    demos, i = [], 0
    while i < len(turns) - 1:
        user, reply = turns[i], turns[i + 1]
        if user.role != "user" or reply.role != "assistant":
            raise RequestError("earlier turns must alternate: a user example, then the assistant's answer")
        demos.append(_demo(user, reply, policy, demo_template))
        if len(demos) > max_demos:
            raise RequestError(f"too many demonstrations: at most {max_demos} per request", "too_large")
        i += 2
    query = turns[-1]
    images = _image_urls(query)
    image = fetch_image(images[0], policy) if images else None
    text = "\n".join([*[s for s in system if s], _texts(query)])
    return Conversation(demos, image, text)


def _demo(user: ChatMessage, reply: ChatMessage, policy: ImagePolicy, template: str) -> Demo:
    images = _image_urls(user)
    image = fetch_image(images[0], policy) if images else None
    return Demo(image, template.format(user=_texts(user), assistant=_texts(reply)).strip())


def _image_urls(message: ChatMessage) -> list[str]:
    if isinstance(message.content, str) or message.content is None:
        return []
    urls = [p.image_url.url for p in message.content if p.type == "image_url" and p.image_url]
    if any(p.type == "image_url" and not p.image_url for p in message.content):
        raise RequestError("an image_url part needs an image_url object with a url")
    if len(urls) > 1:
        raise RequestError("one image per user turn: a demo or the query holds a single image")
    if urls and message.role != "user":
        raise RequestError("only user turns may hold images")
    return urls


def _texts(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return " ".join(p.text for p in message.content if p.type == "text" and p.text)


def prepare_task(request: TaskRequest, policy: ImagePolicy, max_demos: int) -> TaskSpec:
    """Check a task request and decode its uploaded images (no model, no bank)."""
    try:
        request.template.format(question="")
    except (KeyError, IndexError, ValueError):
        raise RequestError("template may only use the field {question}, e.g. 'Q: {question} A:'") from None
    if "{question}" not in request.template:
        raise RequestError("template must hold {question}, where the query's question goes")
    count = len(request.demos) + len(request.demo_keys)
    if request.strategy == "fixed" and request.mode == "zero" and count:
        raise RequestError("mode 'zero' takes no demos")
    if request.strategy != "fixed" and (request.k is None or request.mode not in ("aim", "text")):
        raise RequestError(f"strategy {request.strategy!r} needs k and mode 'aim' or 'text'")
    if request.mode == "icl" and request.demo_keys:
        raise RequestError("mode 'icl' needs uploaded demos with images; bank keys hold no image")
    if max(count, request.k or 0) > max_demos:
        raise RequestError(f"too many demonstrations: at most {max_demos} per task", "too_large")
    uploaded = [
        Demo(None if d.image is None else fetch_image(d.image, policy), d.text) for d in request.demos
    ]
    return TaskSpec(request, uploaded)


class ModelService:
    """Answers chats and task queries with one AIM; demos go through the Demonstration Bank by content key."""

    def __init__(self, aim: AIM, bank_path: str | Path | None = None, model_name: str = "aim"):
        self.aim = aim
        self.model_name = model_name
        self.metrics = Metrics()
        self.tasks: Registry[Task] = Registry("task")
        self._bank_path = bank_path
        self._bank: DemoBank | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def bank(self) -> DemoBank:
        """Opened on first use, on the worker thread (SQLite connections stay on the thread that opened them)."""
        if self._bank is None:
            path = self._bank_path
            if path is None:  # no bank given: a bank for this server's lifetime
                self._tmp = tempfile.TemporaryDirectory(prefix="aim-serve-")
                path = Path(self._tmp.name) / "bank.sqlite"
            self._bank = DemoBank(path, self.aim)
        return self._bank

    def close(self) -> None:
        if self._bank is not None:
            self._bank.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- chats -------------------------------------------------------------------------------------------------

    def answer(self, chat: Conversation, mode: str, max_new_tokens: int, deadline: float) -> Answer:
        """Answer the chat's query in `mode`; in `aim` mode demos come from (or are added to) the bank."""
        demos, hits, keys = ([] if mode == "zero" else chat.demos), 0, []
        if mode == "aim" and demos:
            demos, hits = self._bank_states(demos)
            keys = [d.key for d in demos]
        inputs = self.aim.build_inputs(chat.image, chat.text, demos, mode)
        text = self.aim.generate_from(inputs, max_new_tokens, max_time=_remaining(deadline))
        answer = Answer(
            text, mode, inputs["input_ids"].shape[1], self._count(text), len(demos), hits, 0, keys
        )
        self._observe(answer, misses=len(demos) - hits if mode == "aim" else 0)
        return answer

    def _bank_states(self, demos: list[Demo]) -> tuple[list, int]:
        """Stored states of the demos, reading only those the bank lacks; also how many were already stored."""
        keys = [self.bank.key(d) for d in demos]
        stored = self.bank.store.existing(keys)
        self.bank.write(demos, keys)
        return [self.bank.get(k) for k in keys], sum(k in stored for k in keys)

    # -- tasks -------------------------------------------------------------------------------------------------

    def create_task(self, spec: TaskSpec) -> Task:
        request = spec.request
        if request.name in self.tasks:
            raise RequestError(f"task {request.name!r} already exists; pick another name", "conflict")
        keys = [] if request.mode == "icl" else self.bank.add(spec.uploaded, progress=False)
        missing = [k for k in request.demo_keys if k not in self.bank]
        if missing:
            raise RequestError(f"no demo with key {missing[0]!r} in the bank", "not_found")
        keys += request.demo_keys
        task = Task(
            request.name, request.mode, request.strategy, request.k or len(keys), request.template, keys
        )
        if request.strategy == "fixed":
            task.demos = spec.uploaded if request.mode == "icl" else [self.bank.get(k) for k in keys]
            task.cache = None if request.mode == "icl" else self._prefix_cache(task.demos, request.mode)
        elif len(self.bank) < task.k:
            raise RequestError(f"the bank holds {len(self.bank)} demos, fewer than k={task.k}")
        self.tasks.register(task.name, task)
        return task

    def predict(self, name: str, image, question: str, max_new_tokens: int, deadline: float) -> Answer:
        task = self._task(name)
        text = task.template.format(question=question)
        if task.strategy == "fixed":
            demos, keys = (task.cache.demos if task.cache else task.demos), task.demo_keys
        else:
            demos = self.bank.select(image, task.k, task.strategy, query_text=text)
            keys = [d.key for d in demos]
        inputs = self.aim.build_inputs(
            image, text, demos, task.mode
        )  # the prompt as fed, for its token count
        if task.cache is not None:
            answer = task.cache.generate(image, text, max_new_tokens, max_time=_remaining(deadline))
        else:
            answer = self.aim.generate_from(inputs, max_new_tokens, max_time=_remaining(deadline))
        cached = task.cache.length if task.cache is not None else 0
        hits = 0 if task.mode == "icl" else len(demos)
        result = Answer(
            answer, task.mode, inputs["input_ids"].shape[1], self._count(answer), len(demos), hits
        )
        result.cached_prompt_tokens, result.demo_keys = cached, keys
        self._observe(result, misses=0)
        return result

    def _task(self, name: str) -> Task:
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

    # -- counting ----------------------------------------------------------------------------------------------

    def _count(self, text: str) -> int:
        return len(self.aim.encoder.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _observe(self, answer: Answer, misses: int) -> None:
        self.metrics.observe_answer(
            answer.mode, answer.prompt_tokens, answer.completion_tokens, answer.bank_hits, misses
        )


def _remaining(deadline: float) -> float:
    """Seconds left for generation (transformers stops at `max_time`); a timed-out request wastes little."""
    return max(deadline - time.monotonic(), 0.01)
