"""Evaluation: task registry and loaders, metrics, the runner (`run_eval`), reports and plots.

The public names load on first use (PEP 562): `import aim_icl.eval.metrics` reads no model code, and
`from aim_icl.eval import run_eval` loads the runner (and torch) only then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> module that defines it
_EXPORTS = {
    "TASKS": "aim_icl.eval.tasks",
    "get_task": "aim_icl.eval.tasks",
    "task_names": "aim_icl.eval.tasks",
    "DataPaths": "aim_icl.eval.items",
    "Item": "aim_icl.eval.items",
    "Task": "aim_icl.eval.task",
    "run_eval": "aim_icl.eval.runner",
}
__all__ = ["TASKS", "DataPaths", "Item", "Task", "get_task", "run_eval", "task_names"]

if TYPE_CHECKING:
    from aim_icl.eval.items import DataPaths, Item
    from aim_icl.eval.runner import run_eval
    from aim_icl.eval.task import Task
    from aim_icl.eval.tasks import TASKS, get_task, task_names


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aim_icl.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
