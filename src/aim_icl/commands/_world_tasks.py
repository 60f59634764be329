"""The embedded world's tasks as harness tasks `aim-icl eval --task NAME` runs (fast_binding, caption_style, ...).

A world task has no files: its loader draws items from a seed, each item bringing its own demonstrations
(selection `support`). The evaluation split names the seed: `test` is seed 0, `seedN` seed N (`--eval-split seed3`
draws a fresh set of names, objects and demo orders, as `aim-icl demo --seed 3` does).
"""

from __future__ import annotations

import dataclasses

from aim_icl.errors import AIMError

ITEMS = 200  # items a split holds (`--limit` evaluates fewer)


def register_world_tasks() -> None:
    """Register every world task in `aim_icl.eval.TASKS` (once; later calls do nothing)."""
    from aim_icl.eval.tasks import TASKS
    from aim_icl.world.tasks import DEMO_SHOTS, WORLD_TASKS

    for name, build in WORLD_TASKS.items():
        if name in TASKS:
            continue
        shape = build(0, 1, 1)  # the task's prompts, metrics and answer handling (one item, not kept)
        load = _Loader(name, max(DEMO_SHOTS[name]))
        TASKS.register(
            name,
            dataclasses.replace(shape, load=load, train=[], test=[], eval_split="test", selection="support"),
        )


def world_task_names() -> list[str]:
    from aim_icl.world.tasks import WORLD_TASKS

    return list(WORLD_TASKS)


@dataclasses.dataclass(frozen=True)
class _Loader:
    """`(paths, split) -> items` for one world task: no train split, the evaluation split drawn from its seed."""

    name: str
    max_shots: int

    def __call__(self, paths, split: str) -> list:
        from aim_icl.world.tasks import WORLD_TASKS

        if split == "train":
            return []  # items bring their own demonstrations
        return WORLD_TASKS[self.name](_seed(split), ITEMS, self.max_shots).test


def _seed(split: str) -> int:
    if split == "test":
        return 0
    number = split.removeprefix("seed")
    if split.startswith("seed") and number.isdigit():
        return int(number)
    raise AIMError(
        f"world task splits are drawn from a seed: --eval-split test (seed 0) or seedN, not {split!r}"
    )
