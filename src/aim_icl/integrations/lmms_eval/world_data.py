"""The world's tasks as lmms-eval datasets (`datasets.DatasetDict`, images stored as PNG), drawn from a seed.

- A world task (`aim_icl.world.tasks.WORLD_TASKS`): split `test` holds the queries (`id`, `image`, `question`,
  `answer`, `choices`: the item's closed answer set, `support_ids`: its own demos, in order) and split `train`
  every query's demos (`id`, `image`, `question`, `answer`). A demo's text is `question + " " + answer`, exactly
  the harness's `demo_template`, so the documents give `aim-icl eval` the same items and demos.
- `vqa`: lmms-lab/OK-VQA's schema (`question_id`, `image`, `question`, `answers`: ten references,
  `question_type`, `answer_type`) on world scenes with attribute questions; split `val2014` (as lmms-eval's
  OK-VQA) holds the queries, `train` the demos' documents.
"""

from __future__ import annotations

import random

from aim_icl.eval.items import Item
from aim_icl.world.corpora import fill
from aim_icl.world.measure import QA
from aim_icl.world.scene import sample_scene
from aim_icl.world.tasks import WORLD_TASKS

VQA_REFERENCES = 10  # answers per question, as in VQAv2 and OK-VQA


def world_dataset(name: str, seed: int, items: int, max_shots: int | None = None):
    """The world task `name` drawn from `seed`: `items` queries with `max_shots` demos each (default: the task's)."""
    import datasets

    build = WORLD_TASKS[name]
    task = build(seed, items) if max_shots is None else build(seed, items, max_shots)
    queries = [
        _row(task, item) | {"choices": list(item.candidates), "support_ids": [d.id for d in item.support]}
        for item in task.test
    ]
    demos = [_row(task, demo) for item in task.test for demo in item.support]
    image = {"image": datasets.Image()}
    return datasets.DatasetDict(
        test=datasets.Dataset.from_list(queries, features=_features(queries[0], image)),
        train=datasets.Dataset.from_list(demos, features=_features(demos[0], image)),
    )


def vqa_dataset(seed: int, items: int):
    """World scenes with attribute questions in the OK-VQA schema: `items` queries and as many demo documents."""
    import datasets

    rng = random.Random(f"lmms_eval_vqa/{seed}")
    splits = {}
    for split, offset in (("val2014", 0), ("train", items)):
        rows = [_vqa_row(rng, offset + i) for i in range(items)]
        splits[split] = datasets.Dataset.from_list(
            rows, features=_features(rows[0], {"image": datasets.Image()})
        )
    return datasets.DatasetDict(splits)


def _row(task, item: Item) -> dict:
    return {
        "id": item.id,
        "image": item.load_image(),
        "question": task.query_text(item),
        "answer": item.answers[0],
    }


def _vqa_row(rng: random.Random, index: int) -> dict:
    attribute = tuple(QA)[index % len(QA)]
    scene = sample_scene(rng)
    question, answer = QA[attribute]
    answer = fill(answer, scene)
    return {  # lmms-lab/OK-VQA's columns, in its order
        "question_id": str(index),
        "image": scene.render(),
        "question": question,
        "answers": [answer] * VQA_REFERENCES,
        "question_type": attribute,
        "answer_type": "other",
    }


def _features(row: dict, images: dict):
    """Column types of `row`: strings, integers, lists of strings, and `images`."""
    import datasets

    def kind(value):
        if isinstance(value, list):
            return datasets.Sequence(datasets.Value("string"))
        return datasets.Value("int64" if isinstance(value, int) else "string")

    return datasets.Features({k: images.get(k) or kind(v) for k, v in row.items()})
