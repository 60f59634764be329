"""The task registry and the built-in benchmarks. A new task is one `TASKS.register(name, Task(...))` like these,
in any module; the CLI finds it by `--task-module MODULE`, or, for an installed package, by an entry point in the
`aim_icl.tasks` group (read the first time a name is not registered).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import re
import sys
from pathlib import Path

from aim_icl.errors import AIMError
from aim_icl.eval import loaders
from aim_icl.eval.metrics import normalize_vqa_answer
from aim_icl.eval.task import Task, first_line
from aim_icl.registry import Registry

logger = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "aim_icl.tasks"


def load_entry_points() -> None:
    """Register the tasks of installed packages: each entry point of the `aim_icl.tasks` group names a module
    that registers its tasks when imported (`shapes = "my_pkg.tasks"`), or a `Task`, registered under the entry
    point's name (`shapes = "my_pkg.tasks:SHAPES"`). A package that fails to load is skipped with a warning."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as err:  # a third party's broken package must not hide the other tasks
            logger.warning("skipping task entry point %s = %s: %s", entry.name, entry.value, err)
            continue
        if isinstance(loaded, Task) and entry.name not in TASKS:
            TASKS.register(entry.name, loaded)


TASKS: Registry[Task] = Registry("task", discover=load_entry_points)


def import_task_module(name: str) -> None:
    """Import the user's module that registers tasks: a module name (looked up from the current directory too,
    as `python -m` does) or a path to a .py file."""
    path = Path(name)
    if path.suffix == ".py":
        if not path.is_file():
            raise AIMError(f"--task-module {name}: no such file")
        if getattr(sys.modules.get(path.stem), "__file__", None) == str(path.resolve()):
            return  # imported already: its tasks are registered
        spec = importlib.util.spec_from_file_location(path.stem, path.resolve())
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if not (name == err.name or name.startswith(f"{err.name}.")):
            raise  # the module was found, and something it imports is missing: its own error
        raise AIMError(
            f"--task-module {name}: no module named {err.name!r} here (give a module importable from the current "
            "directory, or a path to a .py file)"
        ) from None


def get_task(name: str) -> Task:
    """A registered task: built-in, registered by the user's own `TASKS.register`, or by an installed package's
    `aim_icl.tasks` entry point."""
    return TASKS.get(name)


def task_names() -> list[str]:
    return TASKS.names()


_VQA_ECHO = re.compile(r"(Question|Short answer|Answer)\s*:")


def vqa_answer(text: str) -> str:
    """First line, cut where the model starts echoing the template, then the official VQA normalisation."""
    return normalize_vqa_answer(_VQA_ECHO.split(first_line(text), 1)[0])


def caption(text: str) -> str:
    return first_line(text).split("Caption:", 1)[0].strip()


for _name, _file in (("coco", "dataset_coco.json"), ("flickr30k", "dataset_flickr30k.json")):
    TASKS.register(
        _name,
        Task(
            _name,
            query_template="Caption:",
            metrics=("cider",),
            load=functools.partial(loaders.karpathy_captions, default_file=_file),
            eval_split="test",
            postprocess=caption,
            max_new_tokens=20,
        ),
    )

for _name in ("vqav2", "okvqa"):
    TASKS.register(
        _name,
        Task(
            _name,
            query_template="Question: {question} Short answer:",
            metrics=("vqa_accuracy",),
            load=functools.partial(loaders.vqa, files=_name),
            postprocess=vqa_answer,
            max_new_tokens=5,
        ),
    )

TASKS.register(
    "vizwiz",
    Task(
        "vizwiz",
        query_template="Question: {question} Short answer:",
        metrics=("vqa_accuracy",),
        load=loaders.vizwiz,
        postprocess=vqa_answer,
        max_new_tokens=5,
    ),
)

TASKS.register(
    "hateful_memes",
    Task(
        "hateful_memes",
        query_template='is an image with written: "{text}" on it. Is it hateful? Answer:',
        metrics=("roc_auc",),
        load=loaders.hateful_memes,
        eval_split="dev",
        candidates=("yes", "no"),
        labels=("no", "yes"),
        max_new_tokens=3,
    ),
)

TASKS.register(
    "induction",
    Task(
        "induction",
        query_template="Question: {question} Answer:",
        metrics=("exact_match",),
        load=loaders.induction,
        train_split="support",
        eval_split="query",
        closed_set=True,
        max_new_tokens=10,
    ),
)
