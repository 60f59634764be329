"""Demo states read through the frozen backbone once, then reused: kept in memory, in a Demonstration Bank, or not.

The backbone is frozen, so a demo's pre-projector states never change. Training reuses them over epochs and
evaluation over cells and trials; a bank file keeps them across runs. Demos are keyed by content
(`fingerprint.content_key`: pixels, text, template) unless the caller has keys of its own (an evaluation pool's
indices, or the keys its bank already gave). `read` and `reused` count the demos read through the backbone and
those served from the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from aim_icl.bank.fingerprint import content_key
from aim_icl.core.demo import Demo, DemoStates

MEMORY = "memory"


class StatesCache:
    """`states(demos)`: each demo's `DemoStates`, read through `aim`'s backbone (batched) only when not kept yet.

    `store`: `"memory"` (this process's RAM, on the CPU in `dtype`; None keeps the dtype read), a `DemoBank`
    (on disk in the bank's dtype; shared with later runs and `aim-icl bank`), or None (nothing kept: every demo
    is read every time, for corpora too large to keep). `remember`: also keep what a bank gave in memory (a
    small pool asked for again and again, as in evaluation). `workers`: processes preparing the demos' images
    and prompts ahead of the model (`AIM.encode`).
    """

    def __init__(
        self,
        aim,
        store=MEMORY,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        remember: bool = False,
        workers: int = 0,
    ):
        self.aim, self.dtype, self.batch_size, self.workers = aim, dtype, batch_size, workers
        self.bank = None if store is None or store == MEMORY else store  # keys in a bank are content keys
        self.remember = store == MEMORY or (self.bank is not None and remember)
        self.read = self.reused = 0
        self._memory: dict[Hashable, DemoStates] = {}

    def key(self, demo: Demo) -> str:
        return content_key(demo.image, demo.text, self.aim.template)

    def states(self, demos: Sequence[Demo]) -> list[DemoStates]:
        """The demos' states, in order (a demo given twice is read once)."""
        keys = [self.key(d) for d in demos]
        by_key = dict(zip(keys, demos))
        return self.states_by_key(keys, by_key.__getitem__)

    def states_by_key(
        self, keys: Sequence[Hashable], demo_of: Callable[[Hashable], Demo]
    ) -> list[DemoStates]:
        """The states of the demos with these keys; `demo_of(key)` makes the demos not kept yet, which are read."""
        unique = list(dict.fromkeys(keys))
        found = self._kept(unique)
        missing = [k for k in unique if k not in found]
        if missing:
            found.update(zip(missing, self._read([demo_of(k) for k in missing], missing)))
        if self.remember:
            self._memory.update(found)
        self.read += len(missing)
        self.reused += len(keys) - len(missing)
        return [found[k] for k in keys]

    def close(self) -> None:
        if self.bank is not None:
            self.bank.close()

    # -- internals ----------------------------------------------------------------------------------------------

    def _kept(self, keys: list[Hashable]) -> dict[Hashable, DemoStates]:
        found = {k: self._memory[k] for k in keys if k in self._memory}
        if self.bank is not None:
            found.update((k, s) for k in keys if k not in found and (s := self.bank.get(k)) is not None)
        return found

    def _read(self, demos: list[Demo], keys: list[Hashable]) -> list[DemoStates]:
        if self.bank is not None:  # the bank reads them, stores them in its dtype, and gives them back
            self.bank.write(demos, keys, self.batch_size)
            return [self.bank.get(k) for k in keys]
        states = self.aim.encode(demos, batch_size=self.batch_size, workers=self.workers)
        if not self.remember:  # used once and dropped: as read, on the model's device and in its dtype
            return states
        return [
            DemoStates(s.hidden.to("cpu", self.dtype), s.token_ids.cpu(), s.text, s.metadata, _key(k))
            for s, k in zip(states, keys)
        ]


def _key(key: Hashable) -> str:
    return key if isinstance(key, str) else ""  # a caller's own key (a pool index) is not a content key


def open_states_cache(
    aim, cache: str | None, dtype: torch.dtype, batch_size: int = 8, workers: int = 0
) -> StatesCache:
    """A training cache as `--cache` names it: None (read every time), "memory", or a bank file path."""
    if cache is None or cache == MEMORY:
        return StatesCache(aim, cache, dtype, batch_size, workers=workers)
    from aim_icl.bank.bank import DemoBank

    return StatesCache(aim, DemoBank(cache, aim, dtype=dtype), batch_size=batch_size, workers=workers)
