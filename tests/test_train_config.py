"""Training configuration: YAML (nested or flat) < command-line flags, unknown keys warned about, bad values refused."""

from __future__ import annotations

import argparse
import logging

import pytest

from aim_icl.commands import train as train_command
from aim_icl.errors import AIMError
from aim_icl.train.config import TrainConfig, load_config, save_config

YAML = """
model: some/model
output: out
data:
  paths: [a.jsonl, b.jsonl]
  format: mmc4
  min_sim: 0.25
optim:
  lr: 3e-4        # YAML 1.1 reads this as text: it must still become a float
  max_steps: 50
max-shots: 6      # flat and dashed keys work too
gradient_checkpointing: true
"""


def parse(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if k != "config"}


def test_yaml_sets_nested_and_flat_options_with_their_types(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(YAML)
    config = load_config(path)
    assert config.data.paths == ["a.jsonl", "b.jsonl"] and config.data.format == "mmc4"
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)
    assert config.optim.max_steps == 50 and config.data.max_shots == 6 and config.data.min_sim == 0.25
    assert config.gradient_checkpointing is True
    assert config.optim.batch_size == TrainConfig().optim.batch_size  # untouched: the default


def test_flags_given_on_the_command_line_override_the_yaml(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(YAML)
    flags = parse("--lr", "1e-3", "--data", "c.jsonl", "--no-gradient-checkpointing", "--batch-size", "2")
    config = load_config(path, flags)
    assert config.optim.lr == 1e-3 and config.data.paths == ["c.jsonl"] and config.optim.batch_size == 2
    assert config.gradient_checkpointing is False
    assert config.optim.max_steps == 50  # from the YAML: an unset flag does not reset it


def test_every_option_is_a_flag():
    flags = parse(
        "--model", "m", "--output", "o", "--data", "x", "--format", "wds", "--max-steps", "7", "--batch-size", "3",
        "--lr", "0.1", "--min-shots", "2", "--max-shots", "5", "--cache", "memory", "--resume",
    )  # fmt: skip
    config = load_config(None, flags).validate()
    assert (
        config.optim.max_steps,
        config.optim.batch_size,
        config.data.min_shots,
        config.data.max_shots,
    ) == (7, 3, 2, 5)
    assert config.resume == "latest" and config.cache == "memory" and config.data.format == "wds"


def test_unknown_keys_are_warned_about_not_fatal(tmp_path, caplog):
    path = tmp_path / "train.yaml"
    path.write_text("output: o\ndata: {paths: [x], shuffle_harder: true}\nfuture_option: 3\n")
    with caplog.at_level(logging.WARNING, logger="aim_icl.train.config"):
        config = load_config(path)
    assert config.output == "o"
    assert "future_option" in caplog.text and "shuffle_harder" in caplog.text


def test_bad_values_and_settings_are_one_line_errors(tmp_path):
    with pytest.raises(AIMError, match="'lr' expects float"):
        load_config(None, {"lr": "fast"})
    with pytest.raises(AIMError, match="min_shots must be at least 1"):
        load_config(None, {"output": "o", "paths": ["x"], "min_shots": 0}).validate()
    with pytest.raises(AIMError, match="did you mean 'mmc4'"):
        load_config(None, {"output": "o", "paths": ["x"], "format": "mmc5"}).validate()
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(AIMError, match="not valid YAML"):
        load_config(bad)


def test_a_saved_config_loads_back_the_same(tmp_path):
    config = load_config(
        None, {"output": "o", "paths": ["x"], "lr": 0.5, "min_sim": 0.3, "prompt": "Caption:"}
    )
    save_config(config, tmp_path / "train_config.yaml")
    assert load_config(tmp_path / "train_config.yaml") == config


def test_device_and_dtype_spelled_as_on_every_verb_with_the_old_spellings_still_read(tmp_path):
    assert TrainConfig().device == "auto" and TrainConfig().dtype == "auto"
    assert load_config(None, parse("--device", "cpu", "--dtype", "bfloat16")).device == "cpu"
    old = load_config(None, parse("--cpu", "--backbone-dtype", "float16"))  # hidden aliases, for one release
    assert (old.device, old.dtype) == ("cpu", "float16")
    path = tmp_path / "old.yaml"
    path.write_text("cpu: true\nbackbone_dtype: bfloat16\n")  # a config written before the rename
    assert (load_config(path).device, load_config(path).dtype) == ("cpu", "bfloat16")
    path.write_text("cpu: false\n")
    assert load_config(path).device == "auto"
    with pytest.raises(AIMError, match="device must be auto, cpu, cuda or mps, not 'cuda:1'"):
        load_config(None, {"output": "o", "paths": ["x"], "device": "cuda:1"}).validate()


def test_help_shows_every_default_and_no_old_spelling(capsys):
    from aim_icl.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in (
        "(default: 100)",
        "(default: 0.0001)",
        "(default: gated)",
        "(default: auto)",
        "(default: on)",
    ):
        assert shown in out
    assert "--backbone-dtype" not in out and "--cpu" not in out and "--device" in out and "--dtype" in out


def test_a_warmup_longer_than_the_run_is_one_warning_line(caplog):
    with caplog.at_level(logging.WARNING, logger="aim_icl.train.config"):
        load_config(None, {"output": "o", "paths": ["x"], "max_steps": 40, "lr": 3e-3}).validate()
    (record,) = caplog.records
    assert record.getMessage() == (
        "warmup_steps 100 >= max_steps 40: the learning rate climbs only to 0.0012 (lr x 0.40) and never decays; "
        "pass --warmup-steps 4 (a tenth of the run) or fewer"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aim_icl.train.config"):
        load_config(None, {"output": "o", "paths": ["x"], "max_steps": 40, "warmup_steps": 4}).validate()
    assert caplog.records == []
