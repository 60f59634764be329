"""Prompts prepared ahead of the model: worker processes load and decode images and run the processor, on the CPU.

The model's thread should only run the model. Everything before it that needs no model (reading and decoding
images, rendering templates, the processor's image transforms and tokenization) is a pure function of a picklable
preparer (the `PromptEncoder`, which holds no model) and the job's data, so it runs in a pool of processes, the way
a `DataLoader` with workers feeds a training loop:

- each worker gets its copy of the preparer once, when it starts; a job is a module-level function called as
  `fn(preparer, *args)` there, and its result comes back through shared memory (tensors) or a pipe;
- `map` keeps the jobs' order and keeps at most `prefetch` jobs per worker in flight (memory does not grow with
  the dataset); `submit` runs one job (the server's requests, as they come);
- `workers=0` runs every job in the calling thread, when its result is asked for: no processes, as before.

Workers are forked (as a `DataLoader`'s are; spawned where there is no fork) and use one torch thread each, so they
do not fight the model for cores.
"""

from __future__ import annotations

import copyreg
import io
import multiprocessing
import os
import pickle
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch
import torch.multiprocessing
from torch.multiprocessing.reductions import reduce_storage, reduce_tensor

PREFETCH = 2  # jobs in flight per worker
SHARED_BYTES = 1 << 20  # tensors from this size on come back through shared memory
MAX_DEFAULT_WORKERS = 8

_preparer: Any = None  # a worker's own copy of the preparer


def default_workers(device: torch.device | str = "cpu") -> int:
    """Workers when the caller names none, at most `MAX_DEFAULT_WORKERS`. With an accelerator, the cores this
    process may use less one (the model's thread). On the CPU the model's own threads need the cores too, so only
    half of them go to workers, less one: none on 2 cores, where a worker made the world demo 1.2-1.7x slower."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    spare = cores - 1 if torch.device(device).type != "cpu" else cores // 2 - 1
    return max(0, min(MAX_DEFAULT_WORKERS, spare))


class PreparePool:
    """`workers` processes running preparation jobs for one preparer; 0: jobs run in the calling thread."""

    def __init__(self, preparer: Any, workers: int):
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        self.preparer, self.workers = preparer, workers
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(preparer, *args)` in a worker; with no workers, here and now."""
        if self.workers == 0:
            future: Future = Future()
            try:
                future.set_result(fn(self.preparer, *args))
            except Exception as err:  # handed to whoever asks for the result, as a worker's would be
                future.set_exception(err)
            return future
        return _Unpickled(self._pool().submit(_call, fn, *args))

    def map(self, fn: Callable[..., Any], jobs: Iterable[tuple], prefetch: int = PREFETCH) -> Iterator[Any]:
        """`fn(preparer, *job)` for each job, in order, with at most `prefetch` jobs per worker queued ahead of
        the one being consumed. A job's exception is raised when its result is reached."""
        if self.workers == 0:
            return (fn(self.preparer, *job) for job in jobs)
        return self._ordered(fn, iter(jobs), prefetch * self.workers)

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None

    def __del__(self):
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # -- internals ----------------------------------------------------------------------------------------------

    def _ordered(self, fn: Callable, jobs: Iterator[tuple], ahead: int) -> Iterator[Any]:
        pending: deque[Future] = deque()
        try:
            for job in jobs:
                pending.append(self.submit(fn, *job))
                if len(pending) > ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a consumer that stops early (an error, a break) leaves no job running
            for future in pending:
                future.cancel()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                # fork where there is one, as torch's DataLoader does: a fresh interpreter (spawn, forkserver)
                # would re-run the user's main script, which scripts without a `__main__` guard cannot take
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                self._executor = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context(method),
                    initializer=_install,
                    initargs=(self.preparer,),
                )
            return self._executor


class _Unpickled(Future):
    """A worker's future whose result arrives pickled."""

    def __init__(self, inner: Future):
        super().__init__()
        self.inner = inner
        inner.add_done_callback(self._done)

    def _done(self, inner: Future) -> None:
        if inner.cancelled():
            super().cancel()
            self.set_running_or_notify_cancel()
        elif inner.exception() is not None:
            self.set_exception(inner.exception())
        else:
            try:
                self.set_result(pickle.loads(inner.result()))
            except Exception as err:
                self.set_exception(err)

    def cancel(self) -> bool:
        return self.inner.cancel()


def _install(preparer: Any) -> None:
    global _preparer
    _preparer = preparer
    torch.set_num_threads(1)
    # shared tensors by file name: the result's bytes travel through any pipe, and this worker's own choice
    torch.multiprocessing.set_sharing_strategy("file_system")


def _call(fn: Callable[..., Any], *args: Any) -> bytes:
    buffer = io.BytesIO()
    _ResultPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(fn(_preparer, *args))
    return buffer.getvalue()


class _ResultPickler(pickle.Pickler):
    """Large tensors (pixel batches: hundreds of MB at real geometries) through shared memory, the rest by value:
    a shared-memory segment per small tensor costs more than copying it through the pipe."""

    dispatch_table = copyreg.dispatch_table.copy()

    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.nbytes >= SHARED_BYTES:
            return reduce_tensor(obj)  # its storage comes here next
        if isinstance(obj, (torch.UntypedStorage, torch.TypedStorage)) and obj.nbytes() >= SHARED_BYTES:
            return reduce_storage(obj)
        return NotImplemented


def release_memory(device: torch.device) -> None:
    """Return cached blocks to the device after an out-of-memory error, so a smaller batch can fit."""
    accelerator = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(accelerator, "empty_cache"):
        accelerator.empty_cache()
