"""One model worker thread behind a bounded queue: the model runs one request at a time, the rest wait or are refused."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class QueueFull(Exception):
    """The queue holds as many waiting requests as it may; the client should retry later."""


class ModelWorker:
    """Runs submitted calls in order on one thread; at most `max_waiting` calls wait behind the running one.

    Everything that touches the model or the bank runs here: torch and SQLite connections stay on one thread.
    """

    def __init__(self, max_waiting: int = 8):
        self._queue: queue.Queue = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(target=self._loop, name="aim-model-worker", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            self._queue.put_nowait((future, fn, args))
        except queue.Full:
            raise QueueFull from None
        return future

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put((None, None, None))
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            future, fn, args = self._queue.get()
            if future is None:
                return
            if not future.set_running_or_notify_cancel():  # cancelled while waiting (its client timed out)
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed to the waiting request, which maps it to a response
                future.set_exception(err)
