"""Corpus 5: evaluation tasks that need in-context learning, drawn from a seed (new names, objects, demo orders).

- `fast_binding`: N objects, each bound to a held-out name only by the demos ("this is a kuz ."); the query is a
  new view of one of them, "this is a" -> its name. Without the demos' images the answer is a guess.
- `caption_style`: the demos caption their images in one style ("circle , red ."); the query must be captioned
  in that style, which only the demos show.

Items hold `max_shots` demos; the first k of them are the k-shot demos. Demos come in rounds that cover every
class once (in a fresh order each round), so k = N, 2N, ... shots are balanced.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from aim_icl.world import formats
from aim_icl.world.corpora import styled_caption
from aim_icl.world.names import EVAL_NAMES
from aim_icl.world.scene import COLOURS, SHAPES, Scene, sample_scene


@dataclass(frozen=True)
class TaskItem:
    query: Scene
    prompt: str
    demos: tuple[tuple[Scene, str], ...]  # (scene, text), max_shots of them
    answer: str
    candidates: tuple[str, ...]  # the closed answer set, for likelihood ranking


def fast_binding(seed: int, n_items: int = 200, n_way: int = 2, max_shots: int = 8) -> list[TaskItem]:
    rng = random.Random(f"fast_binding/{n_way}/{seed}")
    return [_binding_item(rng, n_way, max_shots) for _ in range(n_items)]


def _binding_item(rng: random.Random, n_way: int, max_shots: int) -> TaskItem:
    colours = rng.sample(tuple(COLOURS), n_way)  # objects differ in colour and in shape
    shapes = rng.sample(SHAPES, n_way)
    names = rng.sample(EVAL_NAMES, n_way)
    demos = []
    while len(demos) < max_shots:
        for i in rng.sample(range(n_way), n_way):
            scene = sample_scene(rng, shape=shapes[i], colour=colours[i])
            demos.append((scene, formats.NAME_DEMO.format(n=names[i])))
    pick = rng.randrange(n_way)
    query = sample_scene(rng, shape=shapes[pick], colour=colours[pick])
    return TaskItem(query, formats.NAME_QUERY, tuple(demos[:max_shots]), names[pick], tuple(names))


def caption_style(seed: int, n_items: int = 200, max_shots: int = 8) -> list[TaskItem]:
    rng = random.Random(f"caption_style/{seed}")
    return [_caption_item(rng, max_shots) for _ in range(n_items)]


def _caption_item(rng: random.Random, max_shots: int) -> TaskItem:
    style = rng.choice(tuple(formats.CAPTION_STYLES))
    demos = []
    for _ in range(max_shots):
        scene = sample_scene(rng)
        demos.append(
            (scene, f"{formats.CAPTION_PROMPT} {styled_caption(formats.CAPTION_STYLES[style], scene)}")
        )
    query = sample_scene(rng)
    captions = {name: styled_caption(s, query) for name, s in formats.CAPTION_STYLES.items()}
    return TaskItem(query, formats.CAPTION_PROMPT, tuple(demos), captions[style], tuple(captions.values()))


TASKS = {
    "fast_binding": lambda seed, n_items=200, max_shots=8: fast_binding(seed, n_items, 2, max_shots),
    "fast_binding_4way": lambda seed, n_items=200, max_shots=8: fast_binding(seed, n_items, 4, max_shots),
    "caption_style": caption_style,
}
