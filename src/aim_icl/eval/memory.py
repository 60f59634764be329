"""Peak memory while a block of work runs, per block (not per process lifetime).

On a GPU: `torch.cuda.max_memory_allocated` after resetting the peak (tensors the model allocated: weights,
activations, KV cache). On the CPU: the process's peak resident set size (everything the process holds in RAM:
weights, Python objects, caches, allocator slack). Linux lets a process reset its RSS high-water mark
(`/proc/self/clear_refs`), so the kernel's exact peak for the block is read from `VmHWM`; elsewhere RSS is sampled
every 5 ms and the peak of the samples is reported. `ru_maxrss` is not used: it only grows over the process's life.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import torch

MIB = 2**20
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings and peaks cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.mb`; `peak.kind` says what was measured."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.mb = 0.0
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "process_peak_rss"
        self._sampler: _RssSampler | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_high_water_mark():
            self._sampler = _RssSampler()
            self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / MIB
        elif self._sampler is not None:
            self.mb = self._sampler.stop() / MIB
        else:
            self.mb = _high_water_mark_bytes() / MIB


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return _high_water_mark_bytes() > 0
    except OSError:
        return False


def _high_water_mark_bytes() -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return 0


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float = 0.005):
        super().__init__(daemon=True)
        self._process = psutil.Process()
        self._stop_event = threading.Event()
        self._interval = interval_s
        self.peak = self._process.memory_info().rss

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self._process.memory_info().rss)
