"""Evaluation: task registry and loaders, metrics, the runner (`run_eval`), reports and plots."""

from aim_icl.eval.runner import run_eval
from aim_icl.eval.task import TASKS, DataPaths, Item, Task, get_task

__all__ = ["TASKS", "DataPaths", "Item", "Task", "get_task", "run_eval"]
