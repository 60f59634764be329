"""`aim-icl eval` on files: results JSON / Markdown / plots, one error line, and two processes = one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import RESULT_ROW_FIELDS
from test_eval_formats import write_hateful_memes

from aim_icl.cli import main
from aim_icl.eval.metrics import roc_auc


@pytest.fixture(scope="module")
def saved(tmp_path_factory, saved_llava):
    root = tmp_path_factory.mktemp("eval_cli")
    (root / "model").symlink_to(saved_llava.model, target_is_directory=True)  # the session's tiny LLaVA
    write_hateful_memes(root / "hm", n_train=6, n_dev=4)
    return root


def eval_args(root, out) -> list[str]:
    return ["eval", "--model", str(root / "model"), "--task", "hateful_memes", "--data-dir", str(root / "hm"),
            "--shots", "0", "2", "--modes", "zero", "aim", "--trials", "2", "--output", str(out)]  # fmt: skip


@pytest.fixture(scope="module")
def single_run(saved):
    out = saved / "one"
    assert main(eval_args(saved, out)) == 0
    return out


def test_help_lists_the_tasks(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    assert "hateful_memes" in capsys.readouterr().out


def test_eval_writes_results_table_and_plots(single_run, capsys):
    rows = json.loads((single_run / "results.json").read_text())
    assert all(set(r) >= RESULT_ROW_FIELDS for r in rows)
    assert {(r["mode"], r["shots"]) for r in rows} == {("zero", 0), ("aim", 2)}
    assert {r["metric"] for r in rows} == {"roc_auc", "likelihood_accuracy", "exact_match"}
    # ROC-AUC of each trial's score margins (yes - no) against the dev labels (ids 200-203: no, yes, no, yes)
    records = [json.loads(line) for line in (single_run / "predictions.jsonl").read_text().splitlines()]
    labels = {"200": 0, "201": 1, "202": 0, "203": 1}
    for row in (r for r in rows if r["metric"] == "roc_auc"):
        per_trial = {}
        for rec in records:
            if (rec["mode"], rec["shots"]) == (row["mode"], row["shots"]):
                per_trial.setdefault(rec["trial"], []).append(
                    (labels[rec["id"]], rec["scores"][0] - rec["scores"][1])
                )
        aucs = [roc_auc(*zip(*pairs)) for pairs in per_trial.values()]
        assert row["value"] == pytest.approx(sum(aucs) / len(aucs)) and row["trials"] == len(aucs)
    table = (single_run / "results.md").read_text()
    assert (
        table.startswith("| task | mode | shots | metric |")
        and "| hateful_memes | aim | 2 | roc_auc |" in table
    )
    assert (single_run / "hateful_memes.png").stat().st_size > 1000  # a panel per metric, and memory


def test_limit_and_a_bad_data_dir(saved, tmp_path, capsys):
    args = eval_args(saved, tmp_path / "elsewhere")
    args[args.index("--output")] = "--output-dir"  # the old spelling, kept for one release
    code = main([*args[:-1], str(tmp_path / "limited"), "--limit", "2", "--modes", "zero"])
    assert code == 0
    rows = json.loads((tmp_path / "limited" / "results.json").read_text())
    assert {r["queries"] for r in rows} == {2}
    assert "| hateful_memes | zero | 0 | roc_auc |" in capsys.readouterr().out
    code = main(
        ["eval", "--model", str(saved / "model"), "--task", "hateful_memes", "--data-dir", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("aim-icl eval: error: train file not found") and "\n" not in err


def test_a_world_task_runs_from_eval_with_its_own_demos(tmp_path, capsys):
    """No --model: the shipped world model and projector; the task's items bring their demos (selection support)."""
    out = tmp_path / "world"
    args = [
        "eval",
        "--task",
        "fast_binding",
        "--limit",
        "4",
        "--shots",
        "0",
        "2",
        "--modes",
        "zero",
        "text",
        "aim",
    ]
    assert main([*args, "--output", str(out), "--workers", "0"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert {(r["mode"], r["shots"]) for r in rows} == {("zero", 0), ("text", 2), ("aim", 2)}
    assert {r["trials"] for r in rows} == {1} and {r["queries"] for r in rows} == {4}
    accuracy = {r["mode"]: r["value"] for r in rows if r["metric"] == "likelihood_accuracy"}
    assert accuracy["aim"] >= 0.75  # the trained projector binds names to images (text is a guess)
    assert "| fast_binding | aim | 2 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--task", "hateful_memes", "--selection", "similarity"],
            "selection similarity ranks the pool by image similarity: it needs a bank (--bank PATH)",
        ),
        (["--task", "fast_binding", "--eval-split", "val"], "world task splits are drawn from a seed"),
        (["--task", "fast_binding", "--shots", "128"], "128 shots need 128 demos per query"),
        (["--task", "no_such_task"], "unknown task 'no_such_task'"),
    ],
)
def test_argument_errors_come_before_the_model_loads(saved, extra, message, capsys):
    """The model path does not exist: each error is found before anything tries to load it."""
    args = ["eval", "--model", "no/such/model", "--data-dir", str(saved / "hm"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("aim-icl eval: error: ") and message in err and err.count("\n") == 1


def test_two_processes_equal_one_process(saved, single_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), "-m", "aim_icl.cli"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [*launch, *eval_args(saved, saved / "two")], env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sorted((saved / "two").glob("predictions*.jsonl")) == [
        saved / "two" / "predictions.rank0.jsonl",
        saved / "two" / "predictions.rank1.jsonl",
    ]
    one, two = (json.loads((d / "results.json").read_text()) for d in (single_run, saved / "two"))
    assert [(r["mode"], r["shots"], r["metric"], r["values"]) for r in two] == [
        (r["mode"], r["shots"], r["metric"], r["values"]) for r in one
    ]
    assert predictions(saved / "two") == predictions(single_run)


def predictions(directory) -> dict:
    out = {}
    for path in directory.glob("predictions*.jsonl"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            out[(r["mode"], r["shots"], r["trial"], r["id"])] = (
                r["generated"],
                r["scores"],
                r["prompt_tokens"],
            )
    return out
