"""Measuring the pretrained world model before any projector: single-image QA and binding read from text.

The in-context tasks themselves run through the evaluation harness (`aim-icl demo`, `aim_icl.world.tasks`).
"""

from __future__ import annotations

import random

from aim_icl.core.aim import AIM
from aim_icl.core.demo import Demo
from aim_icl.eval.metrics import exact_match
from aim_icl.world import formats
from aim_icl.world.corpora import distinct_objects, fill
from aim_icl.world.names import EVAL_NAMES
from aim_icl.world.scene import sample_scene
from aim_icl.world.tasks import first_sentence

QA = {  # attribute questions with one exact answer
    "colour": ("what colour is it ?", "{colour} ."),
    "shape": ("what shape is it ?", "{shape} ."),
    "size": ("what size is it ?", "{size} ."),
    "position": ("which side is it on ?", "{position} ."),
}


def qa_accuracy(aim: AIM, seed: int, n_items: int = 200) -> dict[str, float]:
    """Greedy answers to attribute questions on fresh scenes, exact match; per attribute and overall."""
    rng = random.Random(f"qa/{seed}")
    hits: dict[str, list[bool]] = {k: [] for k in QA}
    for i in range(n_items):
        attribute = tuple(QA)[i % len(QA)]
        scene = sample_scene(rng)
        prompt, answer = QA[attribute]
        output = aim.generate(scene.render(), prompt, mode="zero", max_new_tokens=4)
        hits[attribute].append(exact_match(first_sentence(output), fill(answer, scene)) == 1.0)
    result = {k: sum(v) / len(v) for k, v in hits.items()}
    result["all"] = sum(sum(v) for v in hits.values()) / n_items
    return result


def text_binding(aim: AIM, seed: int, binding: str, n_items: int = 200, n_way: int = 2) -> float:
    """Binding evidence given as text before the image (held-out names): how often the right name ranks first.

    The upper bound of `aim` mode: fused tokens can at best carry what this text says.
    """
    rng = random.Random(f"text_binding/{binding}/{seed}")
    hits = 0
    for _ in range(n_items):
        objects, names = distinct_objects(rng, n_way), rng.sample(EVAL_NAMES, n_way)
        statements = [Demo(None, binding.format(d=d, n=n)) for d, n in zip(objects, names)]
        rng.shuffle(statements)
        pick = rng.randrange(n_way)
        colour, shape = objects[pick].split()
        image = sample_scene(rng, shape=shape, colour=colour).render()
        scores = aim.score(image, formats.NAME_QUERY, names, statements, mode="text")
        hits += int(scores.argmax()) == pick
    return hits / n_items
