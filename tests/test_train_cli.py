"""`aim-icl train` end to end: a YAML config plus flags on a saved tiny model, the output loadable as a projector,
one-line errors, and a two-process CPU run (torchrun, as `accelerate launch` starts on GPUs) saving one projector."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import save_tiny

from aim_icl import AIM
from aim_icl.cli import main
from aim_icl.train.synthetic import dax_documents, write_corpus


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Training runs share two cores with other work: one thread is faster than contended two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # larger initial weights than the shared tiny LLaVA's
    return save_tiny(tmp_path_factory.mktemp("model"), text_config={"initializer_range": 0.2})[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    write_corpus(root, "wds", dax_documents(24, seed=5, pairs=3), shards=2)
    return str(root / "shard-{0000..0001}.tar")


def test_train_from_a_yaml_config_and_flags_writes_a_loadable_projector(model_dir, shards, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: {model_dir}\ndata:\n  paths: ['{shards}']\n  format: wds\noptim:\n  lr: 1e-2\n  max_steps: 50\n"
    )
    output = tmp_path / "projector"
    argv = [
        "train",
        "--config",
        str(config),
        "--output",
        str(output),
        "--max-steps",
        "4",
        "--batch-size",
        "2",
    ]
    assert main([*argv, "--max-shots", "2", "--checkpoint-every", "2"]) == 0
    out = capsys.readouterr().out
    assert "trainable:" in out and "trained 4 steps on 8 samples" in out  # the flag beat the YAML's 50 steps
    aim = AIM.from_pretrained(model_dir, projector=output)
    assert torch.count_nonzero(aim.projector.gate) > 0  # the default gated projector, trained off text mode
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert main([*argv, "--max-steps", "6", "--resume"]) == 0  # continues the finished run from step 4
    assert "resumed from" in capsys.readouterr().out


def test_bad_options_are_one_line_errors(model_dir, tmp_path, capsys):
    assert (
        main(["train", "--model", str(model_dir), "--data", str(tmp_path / "none.jsonl"), "--output", "o"])
        == 2
    )
    assert (
        capsys.readouterr().err.strip()
        == f"aim-icl train: error: data file not found: {tmp_path / 'none.jsonl'}"
    )
    assert main(["train", "--data", "x", "--output", "o", "--min-shots", "0"]) == 2


def test_two_processes_train_and_save_one_projector(model_dir, shards, tmp_path):
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "aim_icl.cli", "train", "--model", str(model_dir), "--data", shards, "--format", "wds"]
    command += ["--output", str(output), "--max-steps", "3", "--batch-size", "2", "--checkpoint-every", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        done.stdout.count("trained 3 steps on 12 samples") == 1
    )  # 2 processes x 2 samples x 3 steps, said once
    summary = json.loads((output / "summary.json").read_text())
    assert summary["samples"] == 12 and summary["documents"] == 12  # each process read its own documents
    assert {p.name for p in (output / "checkpoints" / "step-000003").glob("rank-*.json")} == {
        "rank-0.json",
        "rank-1.json",
    }
    AIM.from_pretrained(model_dir, projector=output)


def test_the_summary_counts_each_document_once_across_epochs_and_a_resume(model_dir, tmp_path, capsys):
    write_corpus(tmp_path / "data", "obelics", dax_documents(6, seed=7, pairs=2))
    argv = ["train", "--model", str(model_dir), "--data", str(tmp_path / "data" / "part-0.jsonl"),
            "--image-root", str(tmp_path / "data" / "images"), "--output", str(tmp_path / "out"), "--batch-size", "4",
            "--warmup-steps", "1", "--log-with", "none", "--workers", "0"]  # fmt: skip
    assert main([*argv, "--max-steps", "5"]) == 0  # 20 samples: more than three passes over 6 documents
    assert "trained 5 steps on 20 samples from 6 documents" in capsys.readouterr().out
    assert main([*argv, "--max-steps", "7", "--resume"]) == 0
    assert "trained 7 steps on 28 samples from 6 documents" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["documents"] == 6


def test_a_corpus_in_the_wrong_format_is_one_line_with_counts_and_reasons(model_dir, tmp_path, capsys):
    write_corpus(tmp_path / "data", "mmc4", dax_documents(5, seed=8))
    argv = ["train", "--model", str(model_dir), "--data", str(tmp_path / "data" / "docs-0.jsonl"),
            "--output", str(tmp_path / "out"), "--max-steps", "2", "--log-with", "none", "--workers", "0"]  # fmt: skip
    assert main(argv) == 2  # read as OBELICS rows (the default --format)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "aim-icl train: error: no training sample in the corpus (process 0: 5 skipped (5 not an"
    )
    assert "check --format obelics, --image-root (not given" in err
