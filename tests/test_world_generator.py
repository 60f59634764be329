"""The embedded world's generator: scenes, corpora and tasks are pure functions of their seed; names stay apart."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from aim_icl.cli import main
from aim_icl.world import corpora, formats
from aim_icl.world.names import ALL_NAMES, EVAL_NAMES, PROJECTOR_NAMES, TRAIN_NAMES
from aim_icl.world.scene import ATTRIBUTES, IMAGE_SIZE, sample_scene
from aim_icl.world.tasks import WORLD_TASKS
from aim_icl.world.tokenizer import build_tokenizer
from aim_icl.world.vocab import IMAGE


def pixels(scene) -> np.ndarray:
    return np.asarray(scene.render())


def test_a_scene_renders_the_same_pixels_every_time():
    scene = sample_scene(random.Random(3))
    image = scene.render()
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
    assert np.array_equal(pixels(scene), pixels(sample_scene(random.Random(3))))
    assert not np.array_equal(pixels(scene), pixels(sample_scene(random.Random(4))))


def test_views_of_one_object_differ_but_keep_its_colour_and_shape():
    rng = random.Random(0)
    a, b = (sample_scene(rng, shape="star", colour="red") for _ in range(2))
    assert a.object == b.object == "red star"
    assert not np.array_equal(pixels(a), pixels(b))


@pytest.mark.parametrize("corpus", list(corpora.CORPORA))
def test_corpora_are_determined_by_their_seed(corpus):
    first = list(itertools.islice(corpora.CORPORA[corpus](7), 20))
    again = list(itertools.islice(corpora.CORPORA[corpus](7), 20))
    other = list(itertools.islice(corpora.CORPORA[corpus](8), 20))
    assert first == again
    assert first != other


@pytest.mark.parametrize("task", list(WORLD_TASKS))
def test_tasks_are_determined_by_their_seed(task):
    items = WORLD_TASKS[task](5, 10, 8).test
    assert contents(items) == contents(WORLD_TASKS[task](5, 10, 8).test)
    assert contents(items) != contents(WORLD_TASKS[task](6, 10, 8).test)
    assert all(len(i.support) == 8 and i.answers[0] in i.candidates for i in items)
    assert len({demo.id for i in items for demo in i.support}) == 80  # unique: each demo is read once per run


def test_pretraining_projector_and_evaluation_names_are_disjoint_made_up_words():
    assert len(set(ALL_NAMES)) == len(ALL_NAMES) == len(TRAIN_NAMES) + len(PROJECTOR_NAMES) + len(EVAL_NAMES)
    attribute_words = {v for values in ATTRIBUTES.values() for v in values}
    assert not set(ALL_NAMES) & attribute_words


def names_in(texts) -> set[str]:
    return {word for text in texts for word in text.split() if word in ALL_NAMES}


def test_the_lm_never_reads_a_projector_name_and_the_projector_trains_on_nothing_else():
    """On names the LM memorized a name's second syllable follows from its first, and the projector learnt to
    overwrite that slot; it trains on names only its demos can tell."""
    pretraining = names_in(
        f"{s.text} {s.target}"
        for corpus in ("instruction", "reading", "copying", "described")
        for s in itertools.islice(corpora.CORPORA[corpus](0), 500)
    )
    projector = names_in(
        text for doc in itertools.islice(corpora.interleaved(0), 300) for _, text in doc.pairs
    )
    assert pretraining and pretraining <= set(TRAIN_NAMES)
    assert projector and projector <= set(PROJECTOR_NAMES)


def training_texts(n: int = 300):
    for corpus in ("instruction", "reading", "described"):
        for sample in itertools.islice(corpora.CORPORA[corpus](0), n):
            yield f"{sample.text} {sample.target}"
    for doc in itertools.islice(corpora.interleaved(0), n):
        yield " ".join(text for _, text in doc.pairs)


def test_no_training_corpus_contains_an_evaluation_name():
    held_out = set(EVAL_NAMES)
    assert all(not held_out & set(text.split()) for text in training_texts())


def test_every_word_of_every_corpus_and_task_is_a_known_token_and_names_are_two():
    tok = build_tokenizer()
    texts = list(training_texts(100))
    for build in WORLD_TASKS.values():
        task = build(0, 20, 8)
        for item in task.test:
            texts += [task.query_text(item), *item.answers, *item.candidates]
            texts += [task.demo(demo).text for demo in item.support]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        words = text.replace(IMAGE, " x ").split()
        assert len(ids) == len(words) + sum(w in ALL_NAMES for w in words)  # whitespace costs no token


def test_fast_binding_demos_name_each_object_only_through_its_image():
    task = WORLD_TASKS["fast_binding"](0, 50, 8)
    for item in task.test:
        texts = {task.demo(demo).text for demo in item.support}
        assert texts == {f"{formats.NAME_QUERY} {name}" for name in item.candidates}  # no colour or shape
        assert {demo.answers for demo in item.support[:2]} == {(n,) for n in item.candidates}  # 2 shots: both
        objects = {scene_of(demo).object for demo in item.support}
        assert scene_of(item).object in objects and len(objects) == 2


def scene_of(item):
    return item.image.__self__  # items render their scene lazily


def contents(items) -> list:
    return [
        (i.answers, i.candidates, scene_of(i), [(d.answers, scene_of(d)) for d in i.support]) for i in items
    ]


def test_world_data_writes_obelics_jsonl_with_images(tmp_path):
    assert main(["world", "data", "--corpus", "interleaved", "--n", "3", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "interleaved.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert len(row["images"]) == len(row["texts"]) >= 4
        assert all((img is None) != (txt is None) for img, txt in zip(row["images"], row["texts"]))
        assert all((tmp_path / img).is_file() for img in row["images"] if img)
    assert (
        main(["world", "data", "--corpus", "interleaved", "--n", "3", "--out", str(tmp_path)]) == 2
    )  # no overwrite


def test_every_reference_document_ends_on_an_object_its_earlier_pairs_named():
    """What the projector trains on (last pair as target, every earlier pair as demos) can always be learnt."""
    docs = [d for d in itertools.islice(corpora.interleaved(3), 600) if d.kind == "reference"]
    for doc in docs:
        *demos, (target, name) = doc.pairs
        named = {(s.object, text) for s, text in demos}
        assert (target.object, name) in named
        assert target not in [s for s, _ in demos]  # a new view, not a copy
    lengths = [len(d.pairs) for d in itertools.islice(corpora.interleaved(4), 2000)]
    assert min(lengths) == 2 and max(lengths) == corpora.MAX_SHOTS + 1
    assert sum(n <= 3 for n in lengths) > 0.15 * len(lengths)  # short documents as common as long ones


def test_pretraining_contexts_reach_the_evaluated_shot_counts():
    statements = [
        s.text.count(" .")
        for s in itertools.islice(corpora.described(5), 3000)
        if formats.CAPTION_PROMPT not in s.text
    ]
    assert max(statements) >= corpora.MAX_SHOTS - 2 and min(statements) <= 3


def test_the_16_way_task_needs_many_shots_to_see_every_object():
    """16 held-out names; demos drawn at random with repeats, so k demos show only some objects; the query's
    object is always among the item's 64 demos, and a larger k shows it more often."""
    task = WORLD_TASKS["fast_binding_16way"](11, 200)
    items = task.test
    assert all(len(i.support) == 64 and len(set(i.candidates)) == 16 for i in items)
    assert all(c.removesuffix(" .") in EVAL_NAMES for i in items for c in i.candidates)
    assert all(i.answers[0] in {d.answers[0] for d in i.support} for i in items)
    seen = {
        k: sum(i.answers[0] in {d.answers[0] for d in i.support[:k]} for i in items) / 200
        for k in (8, 16, 64)
    }
    assert seen[8] < 0.6 < seen[16] < 0.8 < seen[64] == 1.0  # expected about 0.40 / 0.64 / 1.0
    objects = [{(d.image.__self__.object, d.answers[0]) for d in i.support} for i in items]
    assert all(len({o for o, _ in pairs}) == len(pairs) for pairs in objects)  # one name per object


def test_pretraining_and_projector_contexts_bind_up_to_16_objects_within_the_models_positions():
    tokenizer = build_tokenizer()
    reading = [s for s in itertools.islice(corpora.reading(2), 3000) if s.text]
    objects = [len({n for n in s.text.split() if n in TRAIN_NAMES}) for s in reading]
    assert max(objects) == corpora.MAX_OBJECTS and min(objects) == 2
    references = [d for d in itertools.islice(corpora.interleaved(2), 3000) if d.kind == "reference"]
    assert max(len({text for _, text in d.pairs}) for d in references) == corpora.MAX_OBJECTS
    longest = max(
        len(tokenizer(s.text + " " + s.target)["input_ids"]) + 16
        for s in itertools.islice(corpora.described(2), 3000)
    )
    assert longest <= 512
