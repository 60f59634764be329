"""The prompt pipeline: preparing in worker processes changes nothing but where the work runs.

Workers on equal workers off query by query (predictions and scores), on the world tasks and on tiny families in
every mode; a corrupt image fails its query alone (and a rerun tries it again); the pool's queue is bounded.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import tiny_aim

from aim_icl.core.demo import Demo
from aim_icl.core.pipeline import PreparePool
from aim_icl.eval.items import Item
from aim_icl.eval.runner import run_eval
from aim_icl.eval.task import Task
from aim_icl.testing.tiny import tiny_image
from aim_icl.world.checkpoint import load_shipped
from aim_icl.world.tasks import WORLD_TASKS


def records(directory) -> dict:
    lines = (directory / "predictions.jsonl").read_text().splitlines()
    return {(r["mode"], r["shots"], r["id"]): r for r in map(json.loads, lines)}


def assert_same(one: dict, other: dict) -> None:
    assert one.keys() == other.keys()
    for key, r in one.items():
        assert other[key]["prediction"] == r["prediction"], key
        assert other[key]["scores"] == pytest.approx(r["scores"], abs=1e-5), key


def colour_task(n: int = 6, corrupt: Item | None = None) -> Task:
    items = [
        Item(f"q{i}", tiny_image(i), {"question": f"what colour is thing {i}?"}, (["red", "blue"][i % 2],))
        for i in range(n)
    ]
    task = Task(
        "colours", "Question: {question} Answer:", ("exact_match",), closed_set=True, max_new_tokens=3
    )
    return task.with_items(items[:4], items[4:] + ([corrupt] if corrupt else []))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_workers_prepare_the_same_prompts_in_every_mode(family, tmp_path):
    aim = tiny_aim(family)
    options = {"shots": [0, 2], "trials": 1, "progress": False, "batch_size": 2}
    for workers in (0, 1):
        run_eval(aim, colour_task(8), output_dir=tmp_path / str(workers), workers=workers, **options)
    assert len(records(tmp_path / "0")) == 4 * 4  # zero, text, icl, aim x 4 queries
    assert_same(records(tmp_path / "0"), records(tmp_path / "1"))


def test_workers_answer_the_world_tasks_as_the_model_thread_does(tmp_path):
    aim = load_shipped()
    for name, build in WORLD_TASKS.items():
        task = build(5, 6, 4)
        for workers in (0, 1):
            run_eval(aim, task, [0, 4], trials=1, selection="support", output_dir=tmp_path / f"{name}{workers}",
                     batch_size=4, workers=workers, progress=False)  # fmt: skip
        assert_same(records(tmp_path / f"{name}0"), records(tmp_path / f"{name}1"))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_fails_only_its_query(llava, tmp_path, caplog, workers):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    task = colour_task(8, corrupt=Item("broken", bad, {"question": "what colour?"}, ("red",)))
    options = {
        "shots": [0, 2],
        "modes": ["zero", "icl", "aim"],
        "trials": 1,
        "progress": False,
        "batch_size": 5,
    }
    rows = run_eval(llava, task, output_dir=tmp_path / "run", workers=workers, **options)
    assert {r["failed"] for r in rows} == {1} and {r["queries"] for r in rows} == {4}  # the others, answered
    assert "item 'broken': cannot read image" in caplog.text
    failed = [r for r in records(tmp_path / "run").values() if "error" in r]
    assert {r["id"] for r in failed} == {"broken"}

    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(bad)  # mended: a rerun answers it, and only it
    rows = run_eval(llava, task, output_dir=tmp_path / "run", workers=workers, **options)
    assert {r["failed"] for r in rows} == {0} and {r["queries"] for r in rows} == {5}


def double(preparer, x: int) -> int:
    return preparer * x


def test_the_queue_is_bounded_and_keeps_order():
    """`map` pulls jobs only as results are consumed: at most `prefetch` per worker ahead (memory stays flat)."""
    pulled = []

    def jobs():
        for i in range(50):
            pulled.append(i)
            yield (i,)

    pool = PreparePool(2, workers=1)
    try:
        results = pool.map(double, jobs(), prefetch=2)
        assert [next(results) for _ in range(3)] == [0, 2, 4]
        assert len(pulled) <= 3 + 2 + 1  # consumed, plus two queued, plus the one being submitted
        assert list(results) == [2 * i for i in range(3, 50)]
    finally:
        pool.close()


def slow_token_count(encoder, text: str) -> int:
    time.sleep(0.2)  # still queued when the model thread asks for another pool
    return len(encoder.text_ids(text))


def test_a_pool_for_another_worker_count_leaves_a_running_map_alone(llava):
    """An evaluation's batches are prepared ahead by a worker while `fuse` reads fresh demos inline (workers 0):
    that must not close the worker's pool (its queued batches were cancelled: CancelledError mid-run)."""
    texts = [f"what colour is {i} ?" for i in range(6)]
    results = llava.pipeline(1).map(slow_token_count, [(t,) for t in texts], prefetch=4)
    first = next(results)
    llava.aggregate([Demo(tiny_image(1), "a red one"), Demo(tiny_image(2), "a blue one")])  # reads inline
    assert [first, *results] == [len(llava.encoder.text_ids(t)) for t in texts]
