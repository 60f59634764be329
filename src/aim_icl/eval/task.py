"""A task is data plus named Python hooks: a loader, prompt templates, metrics and answer post-processing.

The task registry and the built-in tasks live in `aim_icl.eval.tasks`; a new one is one
`TASKS.register(name, Task(...))` call in a short file. Its loader is `load(paths: DataPaths, split: str) ->
list[Item]`, called once for the train split (the demo pool; may be empty when items bring their own demos) and
once for the evaluation split. A `Task` can also hold in-memory items (`Task(..., train=[...], test=[...])`), with
no loader at all.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aim_icl.core.demo import Demo
from aim_icl.errors import AIMError
from aim_icl.eval.hf import is_hf_dataset, load_hf_split
from aim_icl.eval.items import DataPaths, Item, Loader

__all__ = ["DataPaths", "Item", "Loader", "Task", "check_items", "first_line"]


def first_line(text: str) -> str:
    """Default answer post-processing: the generated text up to its first newline, stripped."""
    return text.strip().split("\n", 1)[0].strip()


@dataclass
class Task:
    """How to load, prompt and score one benchmark.

    `query_template` is formatted with an item's fields; a demo's text is `demo_template` formatted with the same
    fields plus `query` (the rendered query) and `answer`. `metrics`: names in `aim_icl.eval.scoring.METRICS`,
    headline first. `candidates`: a closed answer set, ranked by the model's likelihood in every mode next to the
    generated answer (the first candidate is the positive class for `roc_auc`); with `closed_set=True` and no
    candidates, the distinct answers of the data are the set. Items may carry their own candidates and their own
    demonstrations (`Item.support`, VL-ICL-style tasks where each query comes with its support set).
    `selection`: how demos are chosen unless the run says otherwise (`support` for items that bring theirs).
    """

    name: str
    query_template: str
    metrics: tuple[str, ...]
    demo_template: str = "{query} {answer}"
    load: Loader | None = None
    train_split: str = "train"
    eval_split: str = "val"
    candidates: tuple[str, ...] = ()
    closed_set: bool = False
    labels: tuple[str, ...] = ()  # answer of integer label i, for data that stores labels (HF `label`)
    postprocess: Callable[[str], str] = first_line
    max_new_tokens: int = 10
    selection: str = "random"
    train: list[Item] = field(default_factory=list, repr=False)
    test: list[Item] = field(default_factory=list, repr=False)

    def query_text(self, item: Item) -> str:
        return _format(self.query_template, item.fields, item.id)

    def demo(self, item: Item) -> Demo:
        text = _format(self.demo_template, {**item.fields, "query": self.query_text(item)}, item.id, item)
        return Demo(item.image, text)  # a lazy image stays lazy: read where a prompt needs its pixels

    def metric_names(self) -> tuple[str, ...]:
        """The task's metrics, plus likelihood ranking and exact match wherever the answer set is closed."""
        names = list(self.metrics)
        if self.candidates or (self.test and self.test[0].candidates):
            names += [m for m in ("likelihood_accuracy", "exact_match") if m not in names]
        return tuple(names)

    def candidates_for(self, item: Item) -> tuple[str, ...]:
        return item.candidates or self.candidates

    def loaded(self, paths: DataPaths | None = None, eval_split: str | None = None) -> Task:
        """A copy holding the train split (the demo pool's source) and the evaluation split, read by the loader
        (or from a `datasets` directory); a task given its items in memory is returned as it is."""
        paths = paths or DataPaths()
        if self.load is None and self.test and not is_hf_dataset(paths.data_dir):
            return self

        def read(split: str) -> list[Item]:
            if is_hf_dataset(paths.data_dir):
                return load_hf_split(Path(paths.data_dir), split, self.labels)
            if self.load is None:
                raise AIMError(f"task {self.name!r} has no loader; give it items (train=..., test=...)")
            return self.load(paths, split)

        train, test = read(self.train_split), read(eval_split or self.eval_split)
        return self.with_items(train, test)

    def with_items(self, train: list[Item], test: list[Item]) -> Task:
        """A copy holding these items, checked, with its closed answer set filled in from them if asked."""
        check_items(train, test, self.name)
        candidates = self.candidates
        if self.closed_set and not candidates:
            candidates = tuple(sorted({a for item in [*train, *test] for a in item.answers}))
        return dataclasses.replace(self, train=list(train), test=list(test), candidates=candidates)


def check_items(train: list[Item], test: list[Item], name: str) -> None:
    if not test:
        raise AIMError(f"task {name!r} has no evaluation items; check --data-dir and --eval-split")
    ids = [item.id for item in test]
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise AIMError(f"task {name!r}: evaluation item id {dup!r} occurs twice; ids must be unique")
    for item in (test[0], *train[:1]):
        if isinstance(item.image, (str, Path)) and not Path(item.image).is_file():
            raise AIMError(
                f"image not found: {item.image}; pass --image-root (the folder the dataset's paths start at)"
            )
        if not item.answers:
            raise AIMError(f"task {name!r}: item {item.id!r} has no reference answer")


def _format(template: str, fields: Mapping[str, str], item_id: str, item: Item | None = None) -> str:
    values = dict(fields)
    if item is not None:
        values["answer"] = item.demo_answer
    try:
        return template.format(**values)
    except KeyError as err:
        raise AIMError(f"template {template!r} needs field {err} but item {item_id!r} has none") from None
