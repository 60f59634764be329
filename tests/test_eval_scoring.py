"""Scoring, aggregation, selection, reports and peak memory with known answers (no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aim_icl.eval.aggregate import rows_from_records
from aim_icl.eval.items import Item
from aim_icl.eval.memory import PeakMemory
from aim_icl.eval.metrics import cider
from aim_icl.eval.report import markdown_table, write_report
from aim_icl.eval.runner import plan_cells
from aim_icl.eval.scoring import cell_scores
from aim_icl.eval.selection import draw_pool, random_selection
from aim_icl.eval.task import Task
from aim_icl.eval.tasks import caption, vqa_answer


def task_of(metrics, candidates=(), items=()) -> Task:
    return Task("t", "{question}", metrics, candidates=candidates, test=list(items))


def record(item_id, prediction="", scores=None, **extra):
    return {"id": item_id, "prediction": prediction, "scores": scores, **extra}


def test_vqa_accuracy_per_cell():
    items = {"a": Item("a", None, {}, ("cat",) * 8 + ("dog",) * 2), "b": Item("b", None, {}, ("two",) * 10)}
    task = task_of(("vqa_accuracy",))
    # "dog": 2 of 10 humans -> leave-one-out mean (2 x 1/3 + 8 x 2/3) / 10 = 0.6; "2" vs "two": no match.
    assert cell_scores([record("a", "dog"), record("b", "2")], items, task)["vqa_accuracy"] == pytest.approx(
        0.3
    )
    assert cell_scores([record("a", "cat"), record("b", "two")], items, task)["vqa_accuracy"] == 1.0


def test_exact_match_accepts_any_reference_and_likelihood_ranks_candidates():
    items = {"a": Item("a", None, {}, ("Dax",)), "b": Item("b", None, {}, ("wug", "blick"))}
    task = task_of(("exact_match",), candidates=("dax", "wug"))
    records = [record("a", "dax.", [-1.0, -3.0]), record("b", "blick", [-0.5, -0.2])]
    scores = cell_scores(records, items, task)
    assert scores == {"exact_match": 1.0, "likelihood_accuracy": 1.0}
    records[0]["scores"] = [-4.0, -3.0]  # now "wug" is likelier for a
    assert cell_scores(records, items, task)["likelihood_accuracy"] == 0.5


@pytest.mark.parametrize(
    "margins, expected", [([2, 1, -1, -2], 1.0), ([-2, -1, 1, 2], 0.0), ([0, 0, 0, 0], 0.5)]
)
def test_roc_auc_from_yes_minus_no_scores(margins, expected):
    answers = ["yes", "yes", "no", "no"]
    items = {str(i): Item(str(i), None, {}, (a,)) for i, a in enumerate(answers)}
    task = task_of(("roc_auc",), candidates=("yes", "no"))
    records = [record(str(i), "", [m - 5.0, -5.0]) for i, m in enumerate(margins)]
    assert cell_scores(records, items, task)["roc_auc"] == expected


def test_roc_auc_on_one_class_is_nan_not_a_crash():
    items = {"0": Item("0", None, {}, ("no",))}
    task = task_of(("roc_auc",), candidates=("yes", "no"))
    assert math.isnan(cell_scores([record("0", "", [-1.0, -2.0])], items, task)["roc_auc"])


def test_cider_is_the_corpus_score():
    refs = {"1": ("a dog runs on grass", "a dog on the grass"), "2": ("two cats sleep", "cats sleeping")}
    items = {k: Item(k, None, {}, v) for k, v in refs.items()}
    preds = {"1": "a dog on grass", "2": "a cat"}
    got = cell_scores([record(k, v) for k, v in preds.items()], items, task_of(("cider",)))["cider"]
    assert got == pytest.approx(cider(preds, {k: list(v) for k, v in refs.items()}))
    assert got > 0


def test_answer_postprocessing():
    assert vqa_answer(" Two dogs.\nQuestion: what?") == "2 dogs"
    assert vqa_answer("yes Question: is it") == "yes"
    assert caption("A dog on grass. Caption: another\nmore") == "A dog on grass."


def test_plan_reports_zero_shot_once():
    cells = plan_cells(["zero", "text", "aim"], [0, 4, 8], trials=2, seed=10)
    assert cells[0].mode == "zero" and cells[0].shots == 0
    assert sum(c.shots == 0 for c in cells) == 1
    assert [(c.mode, c.shots, c.seed) for c in cells[1:3]] == [("text", 4, 10), ("text", 4, 11)]
    assert len(cells) == 1 + 2 * 2 * 2
    assert plan_cells(["aim"], [4], trials=1, seed=0)[0].mode == "aim"  # no zero row unless asked for


def test_rows_are_mean_and_std_over_trials_with_costs():
    items = [Item(str(i), None, {}, ("yes",)) for i in range(2)]
    task = task_of(("exact_match",), items=items)
    cells = plan_cells(["aim"], [2], trials=2, seed=0)
    base = {"mode": "aim", "shots": 2}
    preds = [
        {**base, **record("0", "yes", trial=0, prompt_tokens=10, latency_ms=5.0)},
        {**base, **record("1", "yes", trial=0, prompt_tokens=12, latency_ms=7.0)},
        {**base, **record("0", "yes", trial=1, prompt_tokens=10, latency_ms=5.0)},
        {**base, **record("1", "no", trial=1, prompt_tokens=12, latency_ms=7.0)},
    ]
    stats = [
        {
            **base,
            "trial": t,
            "rank": 0,
            "queries": 2,
            "wall_s": 0.5,
            "read_s": 0.1,
            "peak_memory_mb": m,
            "memory": "x",
        }
        for t, m in ((0, 100.0), (1, 120.0))
    ]
    (row,) = rows_from_records(task, cells, items, preds, stats, "random")
    assert (row["value"], row["std"], row["trials"], row["values"]) == (0.75, 0.25, 2, [1.0, 0.5])
    assert (row["prompt_tokens"], row["latency_ms"], row["peak_memory_mb"]) == (11.0, 6.0, 120.0)
    assert row["throughput_qps"] == pytest.approx(4.0)  # 4 queries in 1 s
    assert row["read_s"] == pytest.approx(0.2)  # demo reading, summed over the trials' cells
    assert row["seeds"] == [0, 1] and row["selection"] == "random"


def test_random_selection_is_reproducible_nested_and_never_the_query():
    pool = [Item(str(i), None, {}, ("x",)) for i in range(20)]
    select = random_selection(pool)
    query = pool[3]
    picks = select(query, 8, seed=1)
    assert picks == select(query, 8, seed=1)
    assert picks[:4] == select(query, 4, seed=1)  # 4 shots are the first 4 of 8
    assert picks != select(query, 8, seed=2)
    assert 3 not in picks and len(set(picks)) == 8
    assert all(3 not in select(query, 19, seed=s) for s in range(5))


def test_pool_is_a_fixed_seeded_sample_in_split_order():
    train = [Item(str(i), None, {}, ("x",)) for i in range(100)]
    pool = draw_pool(train, 10, seed=0)
    assert [i.id for i in pool] == [i.id for i in draw_pool(train, 10, seed=0)]
    assert [int(i.id) for i in pool] == sorted(int(i.id) for i in pool)
    assert draw_pool(train, 1000, seed=0) == train


def sample_rows():
    common = {"task": "t", "trials": 3, "prompt_tokens": 30.0, "latency_ms": 5.0, "throughput_qps": 2.0}
    return [
        {**common, "mode": "zero", "shots": 0, "metric": "roc_auc", "value": 0.5, "std": 0.0, "peak_memory_mb": 10.0},
        {**common, "mode": "aim", "shots": 4, "metric": "roc_auc", "value": float("nan"), "std": 0.1, "peak_memory_mb": 11.0},
        {**common, "mode": "icl", "shots": 4, "metric": "roc_auc", "value": 0.7, "std": 0.05, "peak_memory_mb": 19.0},
    ]  # fmt: skip


def test_report_files(tmp_path):
    written = write_report(sample_rows(), tmp_path)
    assert {p.name for p in written} == {"results.json", "results.md", "t.png"}  # one figure per task
    rows = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN became null
    assert rows[1]["value"] is None
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    table = markdown_table(sample_rows()).splitlines()
    assert table[0].startswith("| task | mode | shots | metric | value |")
    assert "| t | icl | 4 | roc_auc | 0.7000 ± 0.0500 | 3 | 30.0 | 19 | 5.0 | 2.00 |" in table
    assert "n/a" in table[3]


def test_peak_memory_is_per_block_not_per_process():
    big = np.ones(300 * 2**20 // 8)  # 300 MB resident before the blocks
    del big
    with PeakMemory("cpu") as small:
        np.ones(2**20 // 8).sum()
    with PeakMemory("cpu") as large:
        np.ones(200 * 2**20 // 8).sum()
    assert small.kind == "process_peak_rss"
    assert large.mb - small.mb > 150  # the 200 MB array shows in its own block only
