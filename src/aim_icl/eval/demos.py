"""Pool demos in the form each mode needs; in `aim` mode each pool demo is read through the backbone once per run
(or once ever, with a Demonstration Bank: its states then come from the bank file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aim_icl.bank.cache import MEMORY, StatesCache
from aim_icl.core.aim import AIM
from aim_icl.core.demo import Demo, DemoStates
from aim_icl.core.prompt import laid_out
from aim_icl.eval.items import Item
from aim_icl.eval.task import Task


@dataclass
class PoolBank:
    """A Demonstration Bank holding every pool demo; `keys[i]` is pool demo i's key in it."""

    bank: object  # aim_icl.bank.DemoBank
    keys: list[str]


def open_pool_bank(path: str | Path, aim: AIM, task: Task, pool: list[Item], state) -> PoolBank:
    """Open (or create) the bank and store the pool demos it lacks: the main process writes, then all read."""
    from aim_icl.bank import DemoBank

    demos = [task.demo(item) for item in pool]
    if state.is_main_process:
        with DemoBank(path, aim) as bank:
            bank.add(demos)
    state.wait_for_everyone()
    bank = DemoBank(path, aim)
    return PoolBank(bank, bank.add(demos, progress=False))  # all stored: only computes the keys


class DemoSource:
    """`text`/`icl` modes get `Demo` objects; `aim` gets cached `DemoStates` (pre-projector) from a `StatesCache`:
    the pool bank's when there is one (keyed by content), else one in memory keyed by pool index.

    States are kept on the CPU, so GPU peak memory measures the prompts, not the cache.
    """

    def __init__(
        self,
        aim: AIM,
        task: Task,
        pool: list[Item],
        bank: PoolBank | None = None,
        batch_size: int = 8,
        workers: int = 0,
    ):
        self.task, self.pool = task, pool
        store = MEMORY if bank is None else bank.bank
        self.cache = StatesCache(aim, store, batch_size=batch_size, remember=True, workers=workers)
        self._keys = list(range(len(pool))) if bank is None else bank.keys  # pool index -> cache key
        self._index = {key: i for i, key in enumerate(self._keys)}

    def layouts(self, indices: list[int], mode: str) -> list[Demo]:
        """The demos as a prompt lays them out: their texts, and their (unread) image sources in `icl` mode."""
        return laid_out([self.task.demo(self.pool[i]) for i in indices], mode)

    def states(self, indices: list[int]) -> list[DemoStates]:
        """The pool demos' states, read through the backbone (batched) where the cache lacks them."""
        return self.cache.states_by_key([self._keys[i] for i in indices], self._demo)

    def _demo(self, key) -> Demo:
        return self.task.demo(self.pool[self._index[key]])
