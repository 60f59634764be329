"""Where a training step gets its demos' pre-projector hidden states: read through the backbone, or a cache.

The backbone is frozen, so a demo's hidden states never change during training: a cache lets later epochs skip
reading demos through the backbone. `--cache PATH` uses the Demonstration Bank (`aim_icl.bank.DemoBank`, the same
file format as `aim-icl bank`); `--cache memory` keeps them in this process's RAM (small corpora, benchmarks).
All three share one interface, `states(demos) -> list[DemoStates]`, and count what they read and reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import torch

from aim_icl.core.demo import Demo, DemoStates
from aim_icl.errors import AIMError


class StatesSource(Protocol):
    read: int  # demos read through the backbone
    reused: int  # demos served from the cache

    def states(self, demos: Sequence[Demo]) -> list[DemoStates]: ...


class ReadEveryTime:
    """No cache: every demo is read through the frozen backbone (batched, no gradients)."""

    def __init__(self, aim, batch_size: int = 8):
        self.aim, self.batch_size = aim, batch_size
        self.read = self.reused = 0

    def states(self, demos: Sequence[Demo]) -> list[DemoStates]:
        self.read += len(demos)
        return self.aim.encode(list(demos), batch_size=self.batch_size)


class MemoryCache:
    """Hidden states kept on the CPU in `dtype`, keyed by the demo's pixels and text."""

    def __init__(self, aim, dtype: torch.dtype = torch.float16, batch_size: int = 8):
        self.aim, self.dtype, self.batch_size = aim, dtype, batch_size
        self.read = self.reused = 0
        self._states: dict[str, DemoStates] = {}

    def states(self, demos: Sequence[Demo]) -> list[DemoStates]:
        keys = [demo_key(d) for d in demos]
        missing = {k: d for k, d in zip(keys, demos) if k not in self._states}  # repeats read once
        for key, s in zip(missing, self.aim.encode(list(missing.values()), batch_size=self.batch_size)):
            self._states[key] = DemoStates(s.hidden.to("cpu", self.dtype), s.token_ids.cpu(), s.text)
        self.read += len(missing)
        self.reused += len(demos) - len(missing)
        return [self._states[k] for k in keys]


class BankCache:
    """The Demonstration Bank as a training cache: states are read once, stored on disk, reused by later runs."""

    def __init__(self, bank, batch_size: int = 8):
        self.bank, self.batch_size = bank, batch_size
        self.read = self.reused = 0

    def states(self, demos: Sequence[Demo]) -> list[DemoStates]:
        before = len(self.bank)
        states = self.bank.states(list(demos), batch_size=self.batch_size)
        fresh = len(self.bank) - before
        self.read += fresh
        self.reused += len(demos) - fresh
        return states


def open_states_source(aim, cache: str | None, dtype: torch.dtype, batch_size: int) -> StatesSource:
    if cache is None:
        return ReadEveryTime(aim, batch_size)
    if cache == "memory":
        return MemoryCache(aim, dtype, batch_size)
    try:
        from aim_icl.bank import DemoBank
    except ImportError:
        raise AIMError(
            "--cache PATH needs the Demonstration Bank (aim_icl.bank), which this install lacks; use --cache memory"
        ) from None
    return BankCache(DemoBank(cache, aim, dtype=dtype), batch_size)


def demo_key(demo: Demo) -> str:
    """sha256 over the demo's 8-bit RGB pixels, image size and text."""
    digest = hashlib.sha256(demo.text.encode())
    if demo.image is not None:
        digest.update(f"|{demo.image.width}x{demo.image.height}|".encode())
        digest.update(demo.image.tobytes())
    return digest.hexdigest()
