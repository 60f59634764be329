"""An lmms-eval task's documents as the evaluation harness's items, read through the task object itself.

Every text comes from the task's `doc_to_text` and `doc_to_target`, every image from its `doc_to_visual`, for the
query and for every demo alike: a demo's text is `doc_to_text + target_delimiter + doc_to_target`, as lmms-eval's
own sampler joins it (list targets give their first element, index targets their choice). Texts are read from the
documents without media (what lmms-eval's own prompts read); images from the full documents, when a prompt needs
them.
"""

from __future__ import annotations

import logging
from functools import cached_property

from PIL import Image

from aim_icl.core.demo import load_image
from aim_icl.errors import AIMError
from aim_icl.eval.items import Item
from aim_icl.eval.task import Task

logger = logging.getLogger(__name__)
SUPPORT_COLUMN = "support_ids"  # a query document's own demos: ids of fewshot documents, in order
ID_COLUMN = "id"
REFERENCES = "answers"  # a VQA document's human answers


class TaskView:
    """One lmms-eval task object (a `ConfigurableTask`), seen as items: `item(split, index)`."""

    def __init__(self, task):
        self.task = task
        self.name: str = task.config.task
        self.delimiter: str = task.config.target_delimiter
        self._warned_images = self._warned_target = False

    @cached_property
    def harness_task(self) -> Task:
        """The evaluation harness's task for these items: the query's text as it is, a demo's text joined as
        lmms-eval joins it, answers taken as generated (lmms-eval's filters and metrics post-process them)."""
        return Task(
            self.name,
            query_template="{text}",
            demo_template="{query}{delimiter}{answer}",
            metrics=("exact_match",),
            postprocess=_as_generated,
        )

    def item(self, split: str, index: int, support: tuple[Item, ...] = ()) -> Item:
        """Document `index` of `split`: id `split/index`, its text, its target as the demo's answer. The image is
        read when the item's `image` is called."""
        return Item(
            f"{split}/{index}",
            lambda: self.image(split, index),
            {"text": self.text(split, index), "delimiter": self.delimiter},
            (self.target(split, index),),
            support=support,
        )

    def text(self, split: str, index: int) -> str:
        text = self.task.doc_to_text(self.doc(split, index, media=False))
        if not isinstance(text, str):
            raise AIMError(
                f"task {self.name}: doc_to_text gives a {type(text).__name__}, not a text; aim_icl answers tasks "
                "whose documents are one question each"
            )
        return text

    def target(self, split: str, index: int) -> str:
        """The answer a demo shows, as lmms-eval's sampler writes it; where `doc_to_target` names a column the
        documents lack (lmms-eval's OK-VQA YAML names `answer`, its data has only `answers`), the most common of
        the document's references."""
        doc = self.doc(split, index, media=False)
        if self._target_names_no_column(doc):
            return _most_common(doc[REFERENCES])
        target = self.task.doc_to_target(doc)
        if isinstance(target, list):
            target = target[0] if target else ""
        if isinstance(target, int) and self.task.config.doc_to_choice is not None:
            target = self.task.doc_to_choice(doc)[target]
        return str(target)

    def _target_names_no_column(self, doc: dict) -> bool:
        name = self.task.config.doc_to_target
        missing = isinstance(name, str) and name not in doc and "{" not in name and REFERENCES in doc
        if missing and not self._warned_target:
            self._warned_target = True
            logger.warning("task %s: doc_to_target %r names no column: demos show the most common of %r",
                           self.name, name, REFERENCES)  # fmt: skip
        return missing

    def image(self, split: str, index: int) -> Image.Image | None:
        """The document's first visual as an RGB image (None for a text-only document)."""
        visuals = self.task.doc_to_visual(self.doc(split, index, media=True)) or []
        if not isinstance(visuals, list):
            visuals = [visuals]
        if len(visuals) > 1 and not self._warned_images:
            self._warned_images = True
            logger.warning(
                "task %s gives %d visuals per document: aim_icl reads the first", self.name, len(visuals)
            )
        return load_image(visuals[0]) if visuals else None

    def doc(self, split: str, index: int, media: bool) -> dict:
        datasets = self.task.dataset if media else getattr(self.task, "dataset_no_image", self.task.dataset)
        return datasets[split][index]

    def size(self, split: str) -> int:
        return len(self.task.dataset[split])

    def columns(self, split: str) -> list[str]:
        return list(self.task.dataset[split].column_names)

    def ids(self, split: str) -> list[str]:
        """The split's `id` column (the keys `support_ids` name)."""
        if ID_COLUMN not in self.columns(split):
            raise AIMError(
                f"task {self.name}: split {split} has no {ID_COLUMN!r} column for support_ids to name"
            )
        return [str(i) for i in self.task.dataset[split][ID_COLUMN]]

    def support_ids(self, split: str, index: int) -> list[str]:
        return [str(i) for i in self.doc(split, index, media=False)[SUPPORT_COLUMN]]

    def fewshot_split(self, requested: str | None, query_split: str) -> str:
        """Where demos come from: `requested`, else the task's fewshot, training or validation split, else the
        queries' own split (each query is then left out of its own demos)."""
        config = self.task.config
        splits = self.task.dataset.keys()
        names = (
            (requested,)
            if requested
            else (config.fewshot_split, config.training_split, config.validation_split)
        )
        for name in (n for n in names if n):
            if name in splits:
                return name
            if requested:
                raise AIMError(f"task {self.name} has no split {name!r} (it has {', '.join(splits)})")
        return query_split


def _most_common(references: list) -> str:
    """The most common reference (the first among equals), as the harness's demos show; VQAv2's references are
    `{"answer": ...}` records."""
    answers = [r["answer"] if isinstance(r, dict) else str(r) for r in references]
    return max(answers, key=answers.count) if answers else ""


def _as_generated(text: str) -> str:
    return text
