"""Corpus 5: evaluation tasks that need in-context learning, drawn from a seed (new names, objects, demo orders).

- `fast_binding`: N objects, each bound to a held-out name only by the demos ("this is a kuz ."); the query is a
  new view of one of them, "this is a" -> its name. Without the demos' images the answer is a guess.
- `fast_binding_16way`: 16 objects (colour-shape conjunctions: two may share a colour or a shape), demos drawn
  at random with repeats, so k demos show only some objects and accuracy climbs only by reading more of them; the
  query's object is always among the item's `max_shots` demos.
- `caption_style`: the demos caption their images in one style ("circle , red ."); the query must be captioned
  in that style, which only the demos show.

Each builder returns an evaluation-harness `Task` (`aim_icl.eval`) whose items carry their own demonstrations
(`Item.support`, evaluated with selection "support") and their own closed answer set (`Item.candidates`, ranked by
likelihood next to the generated answer's exact match). An item holds `max_shots` demos; the k-shot demos are the
first k. Demos come in rounds that cover every class once (in a fresh order each round), so k = N, 2N, ... shots
are balanced (except in the 16-way task, drawn at random). Answers end with the world's full stop, so no candidate is a prefix of another; generation stops at
the longest answer's length (a name is 3 tokens with its stop, the longest caption 9).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from aim_icl.eval.task import Item, Task
from aim_icl.world import formats
from aim_icl.world.corpora import distinct_objects, styled_caption
from aim_icl.world.names import EVAL_NAMES
from aim_icl.world.scene import COLOURS, SHAPES, Scene, sample_scene


def first_sentence(text: str) -> str:
    """A generated answer up to and including its first full stop (the model may go on with another)."""
    head, stop, _ = text.strip().partition(" .")
    return head + stop


def fast_binding(seed: int, n_items: int = 200, max_shots: int = 8, n_way: int = 2) -> Task:
    rng = random.Random(f"fast_binding/{n_way}/{seed}")
    name = "fast_binding" if n_way == 2 else f"fast_binding_{n_way}way"
    make = (
        _binding_item if n_way <= len(SHAPES) else _many_way_item
    )  # distinct colours and shapes while they last
    items = [make(rng, f"{name}/{seed}/{i}", n_way, max_shots) for i in range(n_items)]
    return _task(name, formats.NAME_QUERY, ("likelihood_accuracy", "exact_match"), items, max_new_tokens=3)


def _binding_item(rng: random.Random, item_id: str, n_way: int, max_shots: int) -> Item:
    colours = rng.sample(tuple(COLOURS), n_way)  # objects differ in colour and in shape
    shapes = rng.sample(SHAPES, n_way)
    names = [f"{n} ." for n in rng.sample(EVAL_NAMES, n_way)]
    order = []
    while len(order) < max_shots:
        order += rng.sample(range(n_way), n_way)
    demos = [(sample_scene(rng, shape=shapes[i], colour=colours[i]), names[i]) for i in order[:max_shots]]
    pick = rng.randrange(n_way)
    query = sample_scene(rng, shape=shapes[pick], colour=colours[pick])
    return _item(item_id, query, names[pick], demos, names)


def _many_way_item(rng: random.Random, item_id: str, n_way: int, max_shots: int) -> Item:
    """More objects than colours or shapes could tell apart one by one: conjunctions, demos drawn with repeats."""
    objects = [d.split() for d in distinct_objects(rng, n_way)]  # [colour, shape] each
    names = [f"{n} ." for n in rng.sample(EVAL_NAMES, n_way)]
    order = rng.choices(range(n_way), k=max_shots)
    demos = [(sample_scene(rng, shape=objects[i][1], colour=objects[i][0]), names[i]) for i in order]
    pick = rng.choice(sorted(set(order)))  # an object the item's demos show
    query = sample_scene(rng, shape=objects[pick][1], colour=objects[pick][0])
    return _item(item_id, query, names[pick], demos, names)


def caption_style(seed: int, n_items: int = 200, max_shots: int = 8) -> Task:
    rng = random.Random(f"caption_style/{seed}")
    items = [_caption_item(rng, f"caption_style/{seed}/{i}", max_shots) for i in range(n_items)]
    metrics = ("exact_match", "likelihood_accuracy")
    return _task("caption_style", formats.CAPTION_PROMPT, metrics, items, max_new_tokens=9)


def _caption_item(rng: random.Random, item_id: str, max_shots: int) -> Item:
    style = formats.CAPTION_STYLES[rng.choice(tuple(formats.CAPTION_STYLES))]
    demos = [(scene, styled_caption(style, scene)) for scene in (sample_scene(rng) for _ in range(max_shots))]
    query = sample_scene(rng)
    captions = [styled_caption(s, query) for s in formats.CAPTION_STYLES.values()]
    return _item(item_id, query, styled_caption(style, query), demos, captions)


def _item(item_id: str, query: Scene, answer: str, demos: list[tuple[Scene, str]], candidates) -> Item:
    support = tuple(Item(f"{item_id}/demo{j}", s.render, answers=(a,)) for j, (s, a) in enumerate(demos))
    return Item(item_id, query.render, answers=(answer,), support=support, candidates=tuple(candidates))


def _task(name: str, query: str, metrics: tuple[str, ...], items: list[Item], max_new_tokens: int) -> Task:
    task = Task(
        name,
        query_template=query,
        metrics=metrics,
        demo_template="{query} {answer}",
        postprocess=first_sentence,
        max_new_tokens=max_new_tokens,
    )
    return task.with_items([], items)


# task name -> builder `(seed, n_items, max_shots) -> Task` with its items drawn; not the harness's registry of
# loadable benchmarks (`aim_icl.eval.TASKS`), since a world task has no files to load but a seed to draw from
WORLD_TASKS: dict[str, Callable[..., Task]] = {
    "fast_binding": fast_binding,
    "fast_binding_4way": lambda seed, n_items=200, max_shots=8: fast_binding(seed, n_items, max_shots, 4),
    "fast_binding_16way": lambda seed, n_items=200, max_shots=64: fast_binding(seed, n_items, max_shots, 16),
    "caption_style": caption_style,
}

# the shot counts `aim-icl demo` runs unless told: the 16-way task needs many shots to show every object
DEMO_SHOTS = {name: (0, 1, 2, 4, 8, 16, 32) for name in WORLD_TASKS} | {
    "fast_binding_16way": (0, 4, 8, 16, 32, 64)
}
