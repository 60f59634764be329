"""The world's corpora, each an endless generator fully determined by its seed.

1. `instruction`: single-image questions and captions (LLaVA-style instruction data).
2. `reading`: text-only documents that bind made-up names to described objects and use them later, in many
   surface formats, plus copying documents.
3. `described`: single-image samples whose text context describes named objects (or captions in one style) before
   the image; the target names the pictured object (or captions it in that style). Still one image per sample.
4. `interleaved`: multi-image documents for training the AIM projector: reference documents (objects shown and
   named, then shown again; the last pair is always a new view of an object named earlier), pages whose every image
   is captioned in the page's one style, and question pages. Projector names only: names the LM never read
   (`names.py` says why).

Evaluation asks for 1 to `MAX_SHOTS` demonstrations of up to `MAX_OBJECTS` objects, so every context that stands
for demonstrations (binding statements, caption examples, earlier pairs) has a length drawn log-uniformly up to
`MAX_SHOTS`, and every binding context names a log-uniform 2 to `MAX_OBJECTS` objects: as many short contexts as
long ones (a model trained on short contexts only fails at 16 shots; on long ones only, at 1 or 2; a projector
trained on 2-33 pairs fell past 32 shots, measured). A context is cut to `CONTEXT_WORDS` so that it, its image
and its target fit the model's 512 positions (long captions fit about 36 examples).

Corpora 1-3 (pretraining) yield `PretrainSample`s; corpus 4 yields `SceneDocument`s. Corpus 5 (evaluation) is in `tasks.py`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aim_icl.world import formats
from aim_icl.world.names import PROJECTOR_NAMES, TRAIN_NAMES
from aim_icl.world.scene import ATTRIBUTES, COLOURS, SHAPES, Scene, sample_scene
from aim_icl.world.vocab import IMAGE, WORDS

_PLAIN_WORDS = tuple(w for w in WORDS if w.isalpha())
MAX_SHOTS = 64
MAX_OBJECTS = 16  # objects bound in one context (evaluation asks 2, 4 and 16)
CONTEXT_WORDS = 360  # a context's words at most (a name is two tokens): the sample fits 512 positions
RECALLS_PER_DOCUMENT = (2, 6)
# (objects, statements) at most while lookup forms (the curriculum's `first_*` corpora): on samples binding up to 16
# objects over up to 64 statements from the start, the LM never learnt to name a pictured object from bindings in
# words (2-way 0.52, chance, where recall from words alone was 1.0; measured)
FIRST_READING = (5, 32)
# corpus 4's mixture: nearly as many caption pages as reference documents, or the projector learns to write the demo
# images into every slot and captions lose their attributes (measured at 16 shots: 0.69 exact match after training
# on 30% caption pages, 0.85 on 40-45%, against 0.83 for the untrained copy map)
DOCUMENT_KINDS = {"reference": 0.5, "caption": 0.4, "question": 0.1}
AMBIGUOUS_COPIES = 0.6  # share of copying documents that repeat a few words (see `copy_document`)


@dataclass(frozen=True)
class PretrainSample:
    """One training sample: `text` (at most one image marker, where `scene` is shown), then the `target` text.

    The LM loss is on `target` alone; copying documents have an empty `text` and the whole document as target.
    """

    text: str
    target: str
    scene: Scene | None = None


@dataclass(frozen=True)
class SceneDocument:
    """An interleaved document: (scene, text) pairs in reading order; `kind` is a key of `DOCUMENT_KINDS`."""

    pairs: list[tuple[Scene, str]]
    kind: str


def instruction(seed: int) -> Iterator[PretrainSample]:
    return _endless(seed, instruction_sample)


def reading(seed: int) -> Iterator[PretrainSample]:
    return _endless(seed, reading_sample)


def first_reading(seed: int) -> Iterator[PretrainSample]:
    """Corpus 2's binding documents with few objects and short contexts, where in-context lookup first forms."""
    return _endless(seed, lambda rng: reading_sample(rng, *FIRST_READING))


def copying(seed: int) -> Iterator[PretrainSample]:
    """The copying part of corpus 2 alone (a pretraining mixture can weight it separately)."""
    return _endless(seed, lambda rng: PretrainSample("", copy_document(rng)))


def described(seed: int) -> Iterator[PretrainSample]:
    return _endless(seed, described_sample)


def first_described(seed: int) -> Iterator[PretrainSample]:
    """Corpus 3 with few objects and short contexts, where naming a pictured object from words first forms."""
    return _endless(seed, lambda rng: described_sample(rng, *FIRST_READING))


def interleaved(seed: int) -> Iterator[SceneDocument]:
    return _endless(seed, interleaved_document)


CORPORA: dict[str, Callable[[int], Iterator]] = {
    "instruction": instruction,
    "reading": reading,
    "first_reading": first_reading,
    "first_described": first_described,
    "copying": copying,
    "described": described,
    "interleaved": interleaved,
}


def _endless(seed: int, make: Callable[[random.Random], object]) -> Iterator:
    rng = random.Random(seed)
    while True:
        yield make(rng)


def context_length(rng: random.Random, low: int = 1, high: int = MAX_SHOTS) -> int:
    """A count in [low, high], log-uniform: each doubling of the context is as likely as the one before."""
    return min(high, max(low, round(2 ** rng.uniform(math.log2(low), math.log2(high)))))


def object_count(rng: random.Random, most: int = MAX_OBJECTS) -> int:
    """How many objects a binding context names: 2 to `most`, log-uniform."""
    return context_length(rng, 2, most)


def within_budget(texts: list[str], words: int = CONTEXT_WORDS) -> list[str]:
    """The longest prefix of `texts` whose words add up to at most `words`."""
    kept, total = [], 0
    for text in texts:
        total += len(text.split())
        if total > words:
            break
        kept.append(text)
    return kept


# -- corpus 1: single-image instruction data ----------------------------------------------------------------


def instruction_sample(rng: random.Random) -> PretrainSample:
    scene = sample_scene(rng)
    prompt, answer = question(rng, scene)
    return PretrainSample(f"{IMAGE} {prompt}", answer, scene)


def question(rng: random.Random, scene: Scene) -> tuple[str, str]:
    """A (question, answer) pair about the scene: an attribute, the object, its caption, or a yes/no check."""
    if rng.random() < 0.15:
        attribute = rng.choice(tuple(ATTRIBUTES))
        value = rng.choice(ATTRIBUTES[attribute])
        answer = "yes" if getattr(scene, attribute) == value else "no"
        return formats.YES_NO[0].format(value=value), formats.YES_NO[1].format(answer=answer)
    prompt, answer = rng.choice(formats.QUESTIONS[rng.choice(tuple(formats.QUESTIONS))])
    return prompt, fill(answer, scene)


def fill(template: str, scene: Scene) -> str:
    return template.format(
        shape=scene.shape,
        colour=scene.colour,
        size=scene.size,
        position=scene.position,
        caption=scene.caption(),
    )


# -- corpus 2: text-only reading documents ------------------------------------------------------------------


def reading_sample(
    rng: random.Random, max_objects: int = MAX_OBJECTS, max_statements: int = MAX_SHOTS
) -> PretrainSample:
    if rng.random() < 0.3:
        return PretrainSample("", copy_document(rng))
    statements, recalls = binding_document(rng, max_objects, max_statements)
    return PretrainSample(statements, recalls)  # the loss on the recalls: the statements are their context


def binding_document(
    rng: random.Random, max_objects: int = MAX_OBJECTS, max_statements: int = MAX_SHOTS
) -> tuple[str, str]:
    """Names bound to described objects, then used: (the binding statements, the recalls of names from their
    descriptions)."""
    objects = distinct_objects(rng, object_count(rng, max_objects))
    names = rng.sample(TRAIN_NAMES, len(objects))
    count = context_length(rng, len(objects), max_statements)
    statements = binding_statements(rng, objects, names, count)
    recalls = []
    for _ in range(rng.randint(*RECALLS_PER_DOCUMENT)):
        i = rng.randrange(len(objects))
        prompt, answer = rng.choice(formats.RECALLS)
        recalls.append(f"{prompt} {answer}".format(d=objects[i], n=names[i]))
    return " ".join(statements), " ".join(recalls)


def copy_document(rng: random.Random) -> str:
    """A random sequence of names and words, repeated: in-context copying is learnt here first.

    Some sequences repeat a few words ("red star blue star red circle"): the next word is then found only by
    matching the two or three before it, the multi-word lookup that reading a binding ("the red star" -> its name) needs.
    """
    words = TRAIN_NAMES + _PLAIN_WORDS
    if rng.random() < AMBIGUOUS_COPIES:
        words = rng.sample(words, rng.randint(3, 6))
    sequence = " ".join(rng.choices(words, k=rng.randint(3, 12)))
    document = rng.choice(formats.COPIES).format(s=sequence)
    return f"{document} {sequence} ." if rng.random() < 0.5 else document


def binding_statements(rng: random.Random, objects: list[str], names: list[str], count: int) -> list[str]:
    """`count` statements binding objects to their names: each object at least once, then repeats, shuffled;
    in one format or mixed formats; cut to the context's word budget (every object still bound at least once)."""
    one_format = rng.choice(formats.BINDINGS) if rng.random() < 0.6 else None
    repeats = rng.choices(range(len(objects)), k=max(0, count - len(objects)))
    order = list(range(len(objects)))
    rng.shuffle(order)
    statements = [
        (one_format or rng.choice(formats.BINDINGS)).format(d=objects[i], n=names[i]) for i in order
    ]
    statements += within_budget(
        [(one_format or rng.choice(formats.BINDINGS)).format(d=objects[i], n=names[i]) for i in repeats],
        CONTEXT_WORDS - sum(len(s.split()) for s in statements),
    )
    rng.shuffle(statements)
    return statements


def distinct_objects(rng: random.Random, count: int) -> list[str]:
    """`count` distinct "colour shape" descriptions (two may share a colour or a shape)."""
    pairs = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
    return [f"{c} {s}" for c, s in pairs]


# -- corpus 3: single-image samples with named objects described in the context ------------------------------


def described_sample(
    rng: random.Random, max_objects: int = MAX_OBJECTS, max_statements: int = MAX_SHOTS
) -> PretrainSample:
    if rng.random() < 0.25:
        return caption_style_sample(rng, max_statements)
    return naming_sample(rng, max_objects, max_statements)


def naming_sample(
    rng: random.Random, max_objects: int = MAX_OBJECTS, max_statements: int = MAX_SHOTS
) -> PretrainSample:
    """Objects described and named in words, then the image of one of them: the target is its name."""
    objects = distinct_objects(rng, object_count(rng, max_objects))
    names = rng.sample(TRAIN_NAMES, len(objects))
    count = context_length(rng, len(objects), max_statements)
    context = binding_statements(rng, objects, names, count)
    pick = rng.randrange(len(objects))
    colour, shape = objects[pick].split()
    scene = sample_scene(rng, shape=shape, colour=colour)
    query = rng.choice(formats.NAME_QUERIES)
    return PretrainSample(f"{' '.join(context)} {IMAGE} {query}", f"{names[pick]} .", scene)


def caption_style_sample(rng: random.Random, max_examples: int = MAX_SHOTS) -> PretrainSample:
    """Captions of other scenes in one style, then the image: the target captions it in that style."""
    style = formats.CAPTION_STYLES[rng.choice(tuple(formats.CAPTION_STYLES))]
    examples = [
        f"{formats.CAPTION_PROMPT} {styled_caption(style, sample_scene(rng))}"
        for _ in range(context_length(rng, high=max_examples))
    ]
    scene = sample_scene(rng)
    context = " ".join(within_budget(examples))
    return PretrainSample(f"{context} {IMAGE} {formats.CAPTION_PROMPT}", styled_caption(style, scene), scene)


def styled_caption(style: str, scene: Scene) -> str:
    return fill(style, scene)


# -- corpus 4: interleaved multi-image documents ------------------------------------------------------------


def interleaved_document(rng: random.Random) -> SceneDocument:
    kind = rng.choices(tuple(DOCUMENT_KINDS), tuple(DOCUMENT_KINDS.values()))[0]
    pairs = _PAGES[kind](rng, context_length(rng) + 1)
    texts = within_budget([text for _, text in pairs[:-1]])  # the demos (all but the last pair) must fit
    return SceneDocument(pairs[: len(texts)] + pairs[-1:], kind)


def reference_pairs(rng: random.Random, length: int) -> list[tuple[Scene, str]]:
    """Objects shown and named ("this is a manek ."), in shuffled order with repeats; the last pair is a new view
    of one already shown, so its name is always among the pairs before it."""
    objects = distinct_objects(rng, min(object_count(rng), length - 1))
    names = rng.sample(PROJECTOR_NAMES, len(objects))
    order = list(range(len(objects))) + rng.choices(range(len(objects)), k=length - 1 - len(objects))
    rng.shuffle(order)
    order.append(rng.randrange(len(objects)))
    pairs = []
    for i in order:
        colour, shape = objects[i].split()
        pairs.append((sample_scene(rng, shape=shape, colour=colour), formats.NAME_DEMO.format(n=names[i])))
    return pairs


def caption_pairs(rng: random.Random, length: int) -> list[tuple[Scene, str]]:
    """Unrelated images, every one captioned in the page's one style."""
    style = formats.CAPTION_STYLES[rng.choice(tuple(formats.CAPTION_STYLES))]
    scenes = [sample_scene(rng) for _ in range(length)]
    return [(s, f"{formats.CAPTION_PROMPT} {styled_caption(style, s)}") for s in scenes]


def question_pairs(rng: random.Random, length: int) -> list[tuple[Scene, str]]:
    """Unrelated images, each with a question and its answer."""
    scenes = [sample_scene(rng) for _ in range(length)]
    return [(s, " ".join(question(rng, s))) for s in scenes]


_PAGES = {"reference": reference_pairs, "caption": caption_pairs, "question": question_pairs}
