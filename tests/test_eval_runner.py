"""`run_eval` end to end on a tiny LLaVA: every mode, the demo cache, resume after interruption, bank selection."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace

import psutil
import pytest
import torch
from conftest import RESULT_ROW_FIELDS

from aim_icl import AIMError
from aim_icl.core.placement import process_state
from aim_icl.core.prompt import PromptEncoder
from aim_icl.eval import runner
from aim_icl.eval.demos import open_pool_bank
from aim_icl.eval.items import Item
from aim_icl.eval.memory import MIB
from aim_icl.eval.metrics import exact_match
from aim_icl.eval.runner import run_eval
from aim_icl.eval.selection import draw_pool, similarity_selection
from aim_icl.eval.task import Task
from aim_icl.testing.tiny import tiny_image


def toy_task(n_train: int = 8, n_test: int = 4) -> Task:
    """Colour questions with distinct texts; train and test are disjoint items."""
    items = [
        Item(f"q{i}", tiny_image(i), {"question": f"what colour is thing {i}?"}, (["red", "blue"][i % 2],))
        for i in range(n_train + n_test)
    ]
    task = Task("toy", "Question: {question} Answer:", ("exact_match",), closed_set=True, max_new_tokens=3)
    return task.with_items(items[:n_train], items[n_train:])


def score_from_records(task: Task, directory, row: dict) -> float:
    """A row's metric recomputed from its prediction records: the mean over trials of per-query hits."""
    answers = {item.id: item.answers[0] for item in task.test}
    records = [json.loads(line) for line in (directory / "predictions.jsonl").read_text().splitlines()]
    per_trial = {}
    for r in records:
        if (r["mode"], r["shots"]) != (row["mode"], row["shots"]):
            continue
        if row["metric"] == "exact_match":
            hit = exact_match(r["prediction"], answers[r["id"]])
        else:  # likelihood_accuracy: the candidate scored highest
            hit = float(task.candidates[max(range(2), key=lambda i: r["scores"][i])] == answers[r["id"]])
        per_trial.setdefault(r["trial"], []).append(hit)
    assert len(per_trial) == row["trials"]
    return sum(sum(h) / len(h) for h in per_trial.values()) / len(per_trial)


def first_answer(task: Task, directory, row: dict) -> dict:
    """What a row's `example` must say: the first query's prediction in trial 0, and its right answers."""
    records = [json.loads(line) for line in (directory / "predictions.jsonl").read_text().splitlines()]
    first = task.test[0]
    (record,) = [
        r
        for r in records
        if (r["mode"], r["shots"], r["trial"], r["id"]) == (row["mode"], row["shots"], 0, first.id)
    ]
    return {"id": first.id, "prediction": record["prediction"], "answers": list(first.answers)}


def prompt_length(aim, task: Task, item: Item, demos, mode: str) -> int:
    return aim.build_inputs(item.image, task.query_text(item), demos, mode)["input_ids"].shape[1]


def assert_costs(row: dict, resident_mb: list[float]) -> None:
    """A row's latency is its queries' model time (prompt building, generation, scoring; demo reading apart) and
    its peak memory the largest the process held while its cells ran (process RSS on the CPU)."""
    answered = row["queries"] * row["trials"]
    model_ms = 1000 * (row["build_s"] + row["generate_s"] + row["score_s"])
    assert model_ms > 0 and model_ms <= row["latency_ms"] * answered <= 1.05 * model_ms + 5 * answered
    assert (row["read_s"] > 0) == (row["mode"] == "aim")  # only `aim` reads demos through the backbone
    assert row["memory"] == "process_peak_rss" and resident_mb
    assert 0.99 * max(resident_mb) <= row["peak_memory_mb"] <= psutil.virtual_memory().total / MIB


def values(rows):
    return {(r["mode"], r["shots"], r["metric"]): r["value"] for r in rows}


def test_every_mode_end_to_end(llava, monkeypatch, tmp_path):
    read, resident = [], defaultdict(list)
    encode, answer = llava.encode, runner.answer_prepared
    monkeypatch.setattr(
        llava,
        "encode",
        lambda demos, batch_size=8, **kw: read.extend(demos) or encode(demos, batch_size, **kw),
    )

    def answer_noting_memory(aim, task, prepared, *args):  # the process's memory while the cell answers
        resident[prepared.job.mode].append(psutil.Process().memory_info().rss / MIB)
        return answer(aim, task, prepared, *args)

    monkeypatch.setattr(runner, "answer_prepared", answer_noting_memory)
    task = toy_task(n_test=3)
    rows = run_eval(llava, task, shots=[0, 2], trials=2, progress=False, output_dir=tmp_path)

    assert {(r["mode"], r["shots"]) for r in rows} == {("zero", 0), ("text", 2), ("icl", 2), ("aim", 2)}
    assert {r["metric"] for r in rows} == {"exact_match", "likelihood_accuracy"}
    for row in rows:
        assert set(row) >= RESULT_ROW_FIELDS
        assert row["trials"] == (1 if row["mode"] == "zero" else 2) and row["queries"] == 3
        assert row["value"] == pytest.approx(score_from_records(task, tmp_path, row))
        assert row["example"] == first_answer(task, tmp_path, row)
        assert_costs(row, resident[row["mode"]])
    tokens = {r["mode"]: r["prompt_tokens"] for r in rows}
    zero_shot = [prompt_length(llava, task, q, [], "zero") for q in task.test]
    assert tokens["zero"] == pytest.approx(sum(zero_shot) / 3)  # the prompts the queries were asked with
    assert tokens["aim"] == tokens["text"] > tokens["zero"]  # one position per demo token, fused or written
    demos = [task.demo(item) for item in task.train[:2]]  # any two: every image costs the same
    icl, text = (prompt_length(llava, task, task.test[0], demos, mode) for mode in ("icl", "text"))
    assert tokens["icl"] - tokens["text"] == pytest.approx(icl - text) and icl > text  # the two shots' images
    # aim mode read each pool demo through the backbone once, however many queries and trials used it
    texts = [d.text for d in read]
    assert texts and len(texts) == len(set(texts)) < 2 * 2 * 3


def test_zero_mode_only(llava):
    rows = run_eval(llava, toy_task(n_train=0), shots=[0], modes=["zero"], trials=3, progress=False)
    assert {(r["mode"], r["shots"], r["trials"]) for r in rows} == {("zero", 0, 1)}


@pytest.mark.parametrize("batch_size, workers", [(1, 0), (2, 0), (1, 1)])
def test_resume_after_interruption_equals_an_uninterrupted_run(
    llava, tmp_path, monkeypatch, batch_size, workers
):
    options = {"shots": [2], "modes": ["aim"], "trials": 2, "progress": False, "limit": 3, "workers": workers}
    full = run_eval(llava, toy_task(), output_dir=tmp_path / "full", **options)

    answered = []
    answer = runner.answer_prepared

    def interrupt_after_two(aim, task, prepared, *args):
        if len(answered) == 2:
            raise KeyboardInterrupt
        answered.extend(prepared.job.ids)
        return answer(aim, task, prepared, *args)

    monkeypatch.setattr(runner, "answer_prepared", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_eval(llava, toy_task(), output_dir=tmp_path / "run", batch_size=batch_size, **options)
    predictions = tmp_path / "run" / "predictions.jsonl"
    assert len(predictions.read_text().splitlines()) == 2  # every answer was on disk as soon as it was made
    with predictions.open("a") as f:
        f.write('{"mode": "aim", "shots": 2, "tr')  # a record cut short by the interruption

    answered.clear()
    monkeypatch.setattr(runner, "answer_prepared", lambda *a: answered.extend(a[2].job.ids) or answer(*a))
    resumed = run_eval(llava, toy_task(), output_dir=tmp_path / "run", batch_size=batch_size, **options)
    assert len(answered) == 2 * 3 - 2  # only the unfinished queries
    assert values(resumed) == values(full)
    assert json.loads((tmp_path / "run" / "results.json").read_text())[0]["value"] == full[0]["value"]
    answered.clear()
    run_eval(llava, toy_task(), output_dir=tmp_path / "run", **options)
    assert answered == []  # nothing left to do


def test_a_rerun_with_another_setup_is_refused(llava, tmp_path):
    options = {"shots": [2], "modes": ["aim"], "trials": 1, "progress": False, "limit": 1}
    run_eval(llava, toy_task(), output_dir=tmp_path, **options)
    with pytest.raises(AIMError, match="seed"):
        run_eval(llava, toy_task(), output_dir=tmp_path, seed=5, **options)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"modes": ["fused"]}, "unknown mode"),
        ({"shots": [-1]}, "all >= 0"),
        ({"selection": "nearest"}, "unknown demo selection"),
        ({"shots": [20], "modes": ["text"]}, "the pool has 8"),
        ({"selection": "similarity", "modes": ["text"], "shots": [2]}, "--bank"),
    ],
)
def test_bad_arguments_are_clear_errors(llava, kwargs, message):
    with pytest.raises(AIMError, match=message):
        run_eval(llava, toy_task(), **{"trials": 1, "progress": False, **kwargs})


def test_similarity_selection_through_the_bank(llava, tmp_path):
    task = toy_task()
    pool = draw_pool(task.train, 2048, seed=0)
    bank = open_pool_bank(tmp_path / "bank.sqlite", llava, task, pool, process_state("cpu"))
    select = similarity_selection(pool, bank=bank)
    twin = Item(
        "twin", pool[5].image, {"question": "what colour?"}, ("red",)
    )  # pool item 5's image, another id
    picks = select(twin, 3, seed=0)
    assert picks[-1] == 5 and len(set(picks)) == 3  # the most similar demo sits next to the query
    assert 5 not in select(pool[5], 7, seed=0)  # never the query itself
    bank.bank.close()
    rows = run_eval(llava, task, shots=[2], modes=["icl", "aim"], trials=1, selection="similarity",
                    bank=tmp_path / "bank.sqlite", limit=2, progress=False)  # fmt: skip
    assert {r["mode"] for r in rows} == {"icl", "aim"} and all(r["selection"] == "similarity" for r in rows)


def test_items_with_their_own_demos_and_answer_sets(llava, monkeypatch):
    """VL-ICL-style items: each query brings its demonstrations (selection "support") and its candidates."""

    def item(i: int) -> Item:
        answers, fields = (f"dax{i}", f"wug{i}"), {"question": "name?"}
        support = tuple(
            Item(f"q{i}/demo{j}", tiny_image(10 * i + j), fields, (answers[j % 2],)) for j in range(3)
        )
        return Item(f"q{i}", tiny_image(i), fields, (answers[i % 2],), support, answers)

    task = Task("own", "Question: {question} Answer:", ("likelihood_accuracy",), max_new_tokens=2)
    task = task.with_items([], [item(i) for i in range(3)])
    scored, read = [], []
    score, encode = PromptEncoder.query_answer_ids, llava.encode
    monkeypatch.setattr(PromptEncoder, "query_answer_ids", lambda *a: scored.append(a[1:3]) or score(*a))
    monkeypatch.setattr(
        llava,
        "encode",
        lambda demos, batch_size=8, **kw: read.extend(demos) or encode(demos, batch_size, **kw),
    )
    rows = run_eval(
        llava,
        task,
        shots=[1, 3],
        modes=["text", "aim"],
        trials=1,
        selection="support",
        progress=False,
        workers=0,
    )

    assert {(r["mode"], r["shots"]) for r in rows} == {("text", 1), ("text", 3), ("aim", 1), ("aim", 3)}
    assert set(scored) == {("Question: name? Answer:", c) for i in range(3) for c in (f"dax{i}", f"wug{i}")}
    assert len(scored) == 2 * 3 * 4  # each query ranks its own candidates, in each of the 4 cells
    assert sorted(d.text for d in read) == sorted(
        f"Question: name? Answer: {a}" for i in range(3) for a in (f"dax{i}", f"wug{i}", f"dax{i}")
    )  # own demos, read once
    with pytest.raises(AIMError, match="4 shots need 4 demos per query"):
        run_eval(llava, task, shots=[4], modes=["aim"], trials=1, selection="support", progress=False)


def test_a_prompt_past_the_context_is_reported_as_not_fitting(llava, tmp_path, monkeypatch):
    """icl's prompt grows by an image per demo: past the model's context it is not run, and the row says so."""
    zero = run_eval(llava, toy_task(n_test=2), shots=[0], modes=["zero"], progress=False)[0]["prompt_tokens"]
    context = int(zero) + 3 + 8  # the query + 8 answer tokens fit
    monkeypatch.setattr(llava.encoder, "layout", replace(llava.encoder.layout, max_length=context))
    rows = run_eval(llava, toy_task(n_test=2), shots=[0, 2], progress=False, output_dir=tmp_path, workers=0)
    fits = {(r["mode"], r["shots"]): r["fits"] for r in rows}
    assert fits == {("zero", 0): True, ("text", 2): False, ("icl", 2): False, ("aim", 2): False}
    icl = next(r for r in rows if r["mode"] == "icl")
    assert icl["value"] != icl["value"] and icl["prompt_tokens"] > zero  # NaN score, the real prompt length
    assert "does not fit" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())[-1]["value"] is None  # strict JSON


def test_batched_run_equals_one_query_at_a_time(llava, tmp_path):
    """Every mode, batch 1 against batches of 2 and 3 (a short last batch): same predictions and scores."""
    options = {"shots": [0, 2], "trials": 1, "progress": False}
    records = {}
    for size in (1, 2, 3):
        run_eval(llava, toy_task(n_test=3), output_dir=tmp_path / str(size), batch_size=size, **options)
        lines = (tmp_path / str(size) / "predictions.jsonl").read_text().splitlines()
        records[size] = {(r["mode"], r["id"]): r for r in map(json.loads, lines)}
    assert len(records[1]) == 4 * 3
    for size in (2, 3):
        assert records[size].keys() == records[1].keys()
        for key, alone in records[1].items():
            assert records[size][key]["prediction"] == alone["prediction"]
            # one forward over several queries' rows sums in another order: float32 rounding only
            assert records[size][key]["scores"] == pytest.approx(alone["scores"], abs=1e-4)
    with pytest.raises(AIMError, match="batch_size must be at least 1"):
        run_eval(llava, toy_task(), batch_size=0, **options)


def test_out_of_memory_halves_the_batch_for_the_rest_of_the_run(llava, monkeypatch):
    sizes = []
    answer = runner.answer_prepared

    def small_device(aim, task, prepared, *args):
        sizes.append(len(prepared.job.ids))
        if len(prepared.job.ids) > 2:
            raise torch.OutOfMemoryError("out of memory")
        return answer(aim, task, prepared, *args)

    monkeypatch.setattr(runner, "answer_prepared", small_device)
    rows = run_eval(llava, toy_task(n_test=4), shots=[0, 2], modes=["zero", "text"], trials=1, progress=False,
                    batch_size=4)  # fmt: skip
    # zero cell: 4 fails, its halves (2 + 2) run; the text cell starts at 2
    assert sizes == [4, 2, 2, 2, 2]
    assert {r["queries"] for r in rows} == {4}

    def no_memory(*args):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(runner, "answer_prepared", no_memory)
    with pytest.raises(torch.OutOfMemoryError):  # a single query that does not fit is the user's to know
        run_eval(llava, toy_task(n_test=1), shots=[0], modes=["zero"], trials=1, progress=False, batch_size=1)
