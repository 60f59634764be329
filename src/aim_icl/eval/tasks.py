"""The task registry and the built-in benchmarks. A new task is one `TASKS.register(name, Task(...))` like these,
in any module."""

from __future__ import annotations

import functools
import re

from aim_icl.eval import loaders
from aim_icl.eval.metrics import normalize_vqa_answer
from aim_icl.eval.task import Task, first_line
from aim_icl.registry import Registry

TASKS: Registry[Task] = Registry("task")


def get_task(name: str) -> Task:
    """A registered task, built-in or added by the user's own `TASKS.register`."""
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
