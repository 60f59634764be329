"""Measuring the world model: single-image QA, binding read from text, and the ICL tasks in the four modes.

Provisional: the evaluation harness (`aim_icl.eval`) runs the tasks for `aim-icl demo`; these functions measure
the checkpoint while it is built, with the same scoring (likelihood ranking of the candidates, exact match).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aim_icl.core.aim import AIM
from aim_icl.core.demo import Demo, DemoStates
from aim_icl.world import formats
from aim_icl.world.corpora import distinct_objects, fill
from aim_icl.world.names import EVAL_NAMES
from aim_icl.world.scene import sample_scene
from aim_icl.world.tasks import TaskItem

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
        hits[attribute].append(_words(output) == _words(fill(answer, scene)))
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


@dataclass
class TaskScore:
    rank_accuracy: float
    exact_match: float
    prompt_tokens: float


def evaluate(
    aim: AIM, items: Sequence[TaskItem], mode: str, shots: int, generate: bool = True, max_new_tokens: int = 8
) -> TaskScore:
    """Likelihood ranking of each item's candidates (and greedy exact match) with its first `shots` demos."""
    ranked, exact, tokens = [], [], []
    for item in items:
        demos = _demos(aim, item, mode, shots)
        image = item.query.render()
        scores = aim.score(image, item.prompt, item.candidates, demos, mode=mode)
        ranked.append(item.candidates[int(scores.argmax())] == item.answer)
        tokens.append(aim.build_inputs(image, item.prompt, demos, mode)["input_ids"].shape[1])
        if generate:
            output = aim.generate(image, item.prompt, demos, mode=mode, max_new_tokens=max_new_tokens)
            exact.append(_words(output) == _words(item.answer))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return TaskScore(mean(ranked), mean(exact), mean(tokens))


def _demos(aim: AIM, item: TaskItem, mode: str, shots: int) -> list[Demo | DemoStates]:
    demos = [Demo(scene.render(), text) for scene, text in item.demos[:shots]]
    if mode == "zero":
        return []
    if mode == "text":
        return [Demo(None, d.text) for d in demos]
    return demos


def _words(text: str) -> list[str]:
    """Compare answers word by word, ignoring a trailing full stop and spacing."""
    words = text.lower().replace(".", " . ").split()
    while words and words[-1] == ".":
        words.pop()
    return words


@torch.no_grad()
def fit_copy_map(aim: AIM, documents, n_demos: int = 400) -> None:
    """Fit the residual projector's copy map on the demo pairs of interleaved documents."""
    demos = []
    for doc in documents:
        demos += [Demo(scene.render(), text) for scene, text in doc.pairs]
        if len(demos) >= n_demos:
            break
    aim.fit_projector(demos[:n_demos])


def run_tasks(
    aim: AIM,
    seed: int,
    tasks: Sequence[str],
    modes: Sequence[str],
    shots: Sequence[int],
    n_items: int = 200,
    generate: bool = True,
) -> list[dict]:
    """One row per (task, mode, shots): ranking accuracy, exact match, mean prompt tokens, seconds."""
    import time

    from aim_icl.world.tasks import TASKS

    rows = []
    for task in tasks:
        items = TASKS[task](seed, n_items, max(shots))
        for mode in modes:
            for k in shots:
                if (mode == "zero") != (k == 0):
                    continue  # zero-shot is mode `zero`; demos need another mode
                start = time.perf_counter()
                score = evaluate(aim, items, mode, k, generate=generate)
                rows.append(
                    {
                        "task": task,
                        "mode": mode,
                        "shots": k,
                        **vars(score),
                        "seconds": time.perf_counter() - start,
                    }
                )
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'task':<18} {'mode':<5} {'shots':>5} {'rank':>6} {'exact':>6} {'tokens':>7} {'sec':>6}"]
    for r in rows:
        lines.append(
            f"{r['task']:<18} {r['mode']:<5} {r['shots']:>5} {r['rank_accuracy']:>6.3f} {r['exact_match']:>6.3f} "
            f"{r['prompt_tokens']:>7.1f} {r['seconds']:>6.1f}"
        )
    return "\n".join(lines)
