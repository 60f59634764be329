"""aim-icl inside lmms-eval: the `aim_icl` model on the world tasks exported by `aim-icl world export --lmms-eval`,
run through lmms-eval's own CLI (subprocesses, offline) and in-process, against the evaluation harness.

The world model is the shipped one; six items per task keep every run to seconds of CPU.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import lmms_eval.models
import pytest
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager

from aim_icl.cli import main
from aim_icl.errors import AIMError
from aim_icl.eval.runner import run_eval
from aim_icl.integrations.lmms_eval.model import AIMChat, AIMSimple
from aim_icl.integrations.lmms_eval.options import Options
from aim_icl.world.checkpoint import load_shipped
from aim_icl.world.tasks import WORLD_TASKS

ITEMS, SEED, MAX_SHOTS, SHOTS, LIMIT = 6, 3, 32, 4, 5
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lmms_tasks")
    argv = ["world", "export", "--lmms-eval", str(out), "--items", str(ITEMS), "--seed", str(SEED)]
    assert main([*argv, "--max-shots", str(MAX_SHOTS), "--tasks", "fast_binding", "vqa"]) == 0
    return out


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> dict:
    """`aim-icl eval`'s harness on the same items: aim and text modes at SHOTS, the first LIMIT queries."""
    task = WORLD_TASKS["fast_binding"](SEED, ITEMS, MAX_SHOTS)
    out = tmp_path_factory.mktemp("harness")
    rows = run_eval(
        load_shipped(), task, [SHOTS], ["text", "aim"], trials=1, selection="support", limit=LIMIT,
        output_dir=out, batch_size=ITEMS, progress=False,
    )  # fmt: skip
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    by_mode = {mode: [r for r in records if r["mode"] == mode] for mode in ("text", "aim")}
    hits = {
        mode: [float(item.candidates[max(range(2), key=r["scores"].__getitem__)] == item.answers[0])
               for r, item in zip(rs, task.test)]
        for mode, rs in by_mode.items()
    }  # fmt: skip
    return {"rows": rows, "records": by_mode, "ranked": hits}


def lmms_eval_cli(*args: str, out: Path, entry: list[str]) -> list[dict]:
    """Run lmms-eval's CLI offline; its per-document samples (lmms-eval exits 0 even when a run fails)."""
    env = {**os.environ, **OFFLINE}
    done = subprocess.run([*entry, *args, "--output_path", str(out), "--log_samples"], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    samples = sorted(out.rglob("*samples*.jsonl"))
    assert samples, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(line) for line in samples[0].read_text().splitlines()]


def test_lmms_eval_finds_the_model_through_its_entry_point():
    assert lmms_eval.models.get_model("aim_icl") is AIMChat
    assert lmms_eval.models.get_model("aim_icl", force_simple=True) is AIMSimple


def test_world_yamls_ship_for_every_world_task():
    shipped = {p.name for p in (resources.files("aim_icl.integrations.lmms_eval") / "tasks").iterdir()}
    for name in WORLD_TASKS:
        assert {f"aim_world_{name}.yaml", f"aim_world_{name}_mc.yaml"} <= shipped


def test_cli_generation_equals_the_harness(tasks_dir, harness, tmp_path):
    """`lmms-eval eval --model aim_icl`: the same answers, one by one, as `aim-icl eval` on the same items and demos."""
    samples = lmms_eval_cli(
        "eval", "--model", "aim_icl", "--model_args", f"mode=aim,num_fewshot={SHOTS}",
        "--tasks", "aim_world_fast_binding", "--include_path", str(tasks_dir), "--limit", str(LIMIT),
        "--batch_size", str(ITEMS), out=tmp_path, entry=[str(Path(sys.executable).parent / "lmms-eval")],
    )  # fmt: skip
    samples.sort(key=lambda s: s["doc_id"])
    records = harness["records"]["aim"]
    assert [s["filtered_resps"] for s in samples] == [r["generated"] for r in records]
    exact = next(r["value"] for r in harness["rows"] if r["mode"] == "aim" and r["metric"] == "exact_match")
    assert sum(s["exact_match"] for s in samples) / len(samples) == pytest.approx(exact)


def test_python_m_multiple_choice_equals_the_harness_ranking(tasks_dir, harness, tmp_path):
    """`python -m lmms_eval --force_simple`: loglikelihood requests rank the choices as the harness does."""
    samples = lmms_eval_cli(
        "--model", "aim_icl", "--force_simple", "--model_args", f"mode=text,num_fewshot={SHOTS}",
        "--tasks", "aim_world_fast_binding_mc", "--include_path", str(tasks_dir), "--limit", str(LIMIT),
        "--batch_size", str(ITEMS), out=tmp_path, entry=[sys.executable, "-m", "lmms_eval"],
    )  # fmt: skip
    samples.sort(key=lambda s: s["doc_id"])
    assert [s["acc"] for s in samples] == harness["ranked"]["text"]


def evaluate(tasks_dir: Path, task: str, model, limit: int = LIMIT) -> dict:
    manager = TaskManager("WARNING", include_path=str(tasks_dir))
    results = simple_evaluate(
        model=model, tasks=[task], task_manager=manager, limit=limit, verbosity="WARNING"
    )
    return results["results"][task]


def test_a_second_run_with_a_bank_reads_no_demo(tasks_dir, tmp_path):
    bank = tmp_path / "demos.bank"
    first = AIMChat(mode="aim", num_fewshot=SHOTS, bank=str(bank), batch_size=ITEMS)
    scores = evaluate(tasks_dir, "aim_world_fast_binding", first)
    assert first.demos_read == LIMIT * SHOTS
    second = AIMChat(mode="aim", num_fewshot=SHOTS, bank=str(bank), batch_size=ITEMS)
    assert evaluate(tasks_dir, "aim_world_fast_binding", second) == scores
    assert second.demos_read == 0


def test_lmms_evals_response_cache_answers_a_second_run(tasks_dir, tmp_path, monkeypatch):
    answered = []
    generate = AIMChat.generate_until
    monkeypatch.setattr(
        AIMChat,
        "generate_until",
        lambda self, requests: answered.append(len(requests)) or generate(self, requests),
    )
    manager = TaskManager("WARNING", include_path=str(tasks_dir))
    results = [
        simple_evaluate(
            model="aim_icl", model_args=f"mode=aim,num_fewshot={SHOTS}", tasks=["aim_world_fast_binding"],
            task_manager=manager, limit=2, use_cache=str(tmp_path / "responses"), verbosity="WARNING",
        )["results"]["aim_world_fast_binding"]["exact_match,none"]
        for _ in range(2)
    ]  # fmt: skip
    assert results[0] == results[1] and answered == [2]  # the second run's answers came from the cache


@pytest.mark.parametrize("mode", ["zero", "text", "icl", "aim"])
def test_the_ok_vqa_schema_task_is_scored_by_lmms_evals_vqa_accuracy(tasks_dir, mode):
    """The OK-VQA schema (ten answers per question) through lmms-eval's own OK-VQA scoring, in every mode."""
    scores = evaluate(tasks_dir, "aim_world_vqa", AIMChat(mode=mode, num_fewshot=SHOTS, batch_size=ITEMS))
    assert 0.0 <= scores["exact_match,none"] <= 1.0


@pytest.mark.parametrize("selection", ["similarity", "text_similarity"])
def test_bank_selections_pick_demos_from_the_fewshot_split(tasks_dir, tmp_path, selection):
    model = AIMChat(
        mode="aim", num_fewshot=2, selection=selection, bank=str(tmp_path / "b"), batch_size=ITEMS
    )
    scores = evaluate(tasks_dir, "aim_world_vqa", model, limit=3)
    assert 0.0 <= scores["exact_match,none"] <= 1.0
    assert model.demos_read == ITEMS  # the whole pool (the train split), read once to rank it


def test_icl_past_the_context_answers_empty_and_the_run_goes_on(tasks_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="aim_icl"):
        scores = evaluate(
            tasks_dir, "aim_world_fast_binding", AIMChat(mode="icl", num_fewshot=MAX_SHOTS), limit=2
        )
    assert scores["exact_match,none"] == 0.0
    assert "2 of 2 prompts (mode=icl, 32 shots" in caplog.text and "do not fit" in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"mode": "fused"}, "mode=fused is not a mode"),
        ({"shots": 4}, "takes no model_arg shots"),
        ({"selection": "similarity"}, "needs bank=FILE"),
        ({"num_fewshot": "four"}, "num_fewshot must be a whole number"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"pretrained": "org/model"}, "needs projector=DIR"),
    ],
)
def test_bad_model_args_are_one_line(args, message):
    with pytest.raises(AIMError, match=message):
        Options.parse(**args)


def test_model_args_win_over_lmms_evals_flags():
    model = AIMChat.create_from_arg_string("mode=zero,batch_size=3", {"batch_size": 6, "device": "cpu"})
    assert (model.batch_size, model.options.device) == (3, "cpu")
    assert Options.parse(batch_size="auto", max_batch_size=None, num_fewshot=8.0).batch_size is None
