"""Named tasks a client registers once and queries many times: fixed demos (prefix-cached where the mode allows)
or `k` demos picked per query from the bank. `prepare_task` only validates and decodes images (no model).

`TaskRegistry` holds the served tasks: read from any thread (a lock guards the map), changed on the engine's
thread. With a bank file each task is also stored in it (`bank.tasks.TaskTable`: its definition and demo keys,
`icl` demos with their images as PNG) and `sync` loads what the file holds that the registry lacks (at start, and
when another process on the same file, a replica, created or deleted tasks).
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from aim_icl.core.demo import Demo
from aim_icl.core.modes import mode_of
from aim_icl.serve.errors import RequestError
from aim_icl.serve.images import ImagePolicy, fetch_image
from aim_icl.serve.schemas import TaskRequest
from aim_icl.serve.templates import check_template

logger = logging.getLogger(__name__)


@dataclass
class ServedTask:
    """A registered task: fixed demos (with a prefix cache where the mode allows) or per-query selection."""

    name: str
    mode: str
    strategy: str
    k: int
    template: str
    demo_keys: list[str]
    demos: list = field(default_factory=list)  # fixed tasks: Demo (icl) or bank states
    cache: object | None = None  # RowPrefix for fixed demos in aim/text/zero mode

    def definition(self) -> dict:
        """What the task table stores: everything but the demos' states, which the bank holds by key."""
        stored = {k: getattr(self, k) for k in ("mode", "strategy", "k", "template", "demo_keys")}
        if mode_of(self.mode).demo_images:
            stored["demos"] = [{"image": _png_url(d.image), "text": d.text} for d in self.demos]
        return stored


@dataclass
class TaskSpec:
    """A validated task request with its uploaded images decoded."""

    request: TaskRequest
    uploaded: list[Demo]


def prepare_task(request: TaskRequest, policy: ImagePolicy, max_demos: int) -> TaskSpec:
    """Check a task request and decode its uploaded images (no model, no bank)."""
    check_template(request.template, ("question",), required=("question",))
    count = len(request.demos) + len(request.demo_keys)
    rules = mode_of(request.mode)
    if request.strategy == "fixed" and not rules.demos and count:
        raise RequestError("mode 'zero' takes no demos")
    if request.strategy == "fixed" and rules.demos and not count:
        raise RequestError(
            f"a task in mode {request.mode!r} needs demos: give demos or demo_keys, or a strategy with k to pick "
            "them from the bank per query (mode 'zero' takes none)"
        )
    if request.strategy != "fixed" and (request.k is None or not rules.demos or rules.demo_images):
        raise RequestError(f"strategy {request.strategy!r} needs k and mode 'aim' or 'text'")
    if rules.demo_images and request.demo_keys:
        raise RequestError("mode 'icl' needs uploaded demos with images; bank keys hold no image")
    if max(count, request.k or 0) > max_demos:
        raise RequestError(f"too many demonstrations: at most {max_demos} per task", "too_large")
    uploaded = [
        Demo(None if d.image is None else fetch_image(d.image, policy), d.text) for d in request.demos
    ]
    return TaskSpec(request, uploaded)


class TaskRegistry:
    """The served tasks by name; stored in the task table of the bank file at `path` when there is one."""

    def __init__(self, path: Path | None, persistent: bool):
        self.path, self.persistent = path, persistent
        self.table = None  # bank.tasks.TaskTable, opened by `open` (the bank file must exist first)
        self._tasks: dict[str, ServedTask] = {}
        self._lock = threading.Lock()

    def open(self) -> None:
        from aim_icl.bank.tasks import TaskTable

        self.table = TaskTable(self.path)

    def close(self) -> None:
        if self.table is not None:
            self.table.close()

    # -- any thread ---------------------------------------------------------------------------------------------

    def get(self, name: str) -> ServedTask | None:
        with self._lock:
            return self._tasks.get(name)

    def all(self) -> list[ServedTask]:
        with self._lock:
            return [self._tasks[n] for n in sorted(self._tasks)]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._tasks

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)

    def stale(self) -> bool:
        """Whether another process changed the stored tasks since the last `sync`."""
        return self.table is not None and self.table.changed()

    # -- the engine's thread ------------------------------------------------------------------------------------

    def save(self, task: ServedTask, rows: list, bank) -> None:
        """Store the task with the demo rows it brings (into the table, or the bank when tasks live in memory)."""
        from aim_icl.bank.tasks import TaskExists

        if self.table is None:
            bank.insert(rows)
        else:
            try:
                self.table.save(task.name, task.definition(), rows)
            except TaskExists as err:
                raise RequestError(str(err), "conflict") from None
        with self._lock:
            self._tasks[task.name] = task

    def delete(self, name: str) -> bool:
        with self._lock:
            if self._tasks.pop(name, None) is None:
                return False
        if self.table is not None:
            self.table.delete(name)
        return True

    def sync(self, bank) -> list[ServedTask]:
        """Load the stored tasks the registry lacks and drop those no longer stored; returns the loaded ones (their
        prefix caches are the caller's to make)."""
        if self.table is None:
            return []
        stored = self.table.all()
        with self._lock:
            for name in set(self._tasks) - set(stored):
                del self._tasks[name]
            new = {n: d for n, d in stored.items() if n not in self._tasks}
        loaded = [task for name, d in new.items() if (task := _load(name, d, bank)) is not None]
        with self._lock:
            self._tasks.update((task.name, task) for task in loaded)
        return loaded


def _load(name: str, stored: dict, bank) -> ServedTask | None:
    """A stored task with its demos (states from the bank, `icl` demos decoded); None (logged) if it cannot be."""
    task = ServedTask(
        name, stored["mode"], stored["strategy"], stored["k"], stored["template"], stored["demo_keys"]
    )
    if task.strategy != "fixed":
        return task
    if mode_of(task.mode).demo_images:
        task.demos = [Demo(_image(d["image"]), d["text"]) for d in stored.get("demos", [])]
        return task
    task.demos = [bank.get(key) for key in task.demo_keys]
    if any(d is None for d in task.demos):
        logger.warning("stored task %r names demos its bank does not hold; not served", name)
        return None
    return task


def _png_url(image) -> str | None:
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the same pixels when the task is loaded again
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image(url: str | None):
    if url is None:
        return None
    return Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGB")
