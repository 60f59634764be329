"""Projectors on the Hugging Face Hub, offline: loading by repo id from a Hub cache laid out as huggingface_hub
writes it, model cards, and uploads checked up to the network (the HfApi calls are recorded, never made)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml
from conftest import RESULT_ROW_FIELDS
from huggingface_hub import constants
from safetensors.torch import save

from aim_icl import AIM, AIMError
from aim_icl.cli import main
from aim_icl.core.loading import load_processor
from aim_icl.core.projector_config import CONFIG_NAME, WEIGHTS_NAME
from aim_icl.eval.report import markdown_table
from aim_icl.hub.card import CARD_NAME, read_saved, render_card
from aim_icl.hub.push import push_projector_to_hub
from aim_icl.testing.tiny import tiny_image
from aim_icl.world.checkpoint import PROJECTOR_DIR, check_fingerprint

MAIN, V1 = "a" * 40, "b" * 40  # commits


def cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, refs=("main",)) -> Path:
    """A model repo in a Hub cache as huggingface_hub lays it out: content in `blobs/`, `snapshots/<commit>/`
    holding relative symlinks to the blobs, and `refs/<branch or tag>` holding the commit it points at."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def projector_files(directory: Path, **backbone) -> dict[str, bytes]:
    config = json.loads((directory / CONFIG_NAME).read_text())
    config["backbone"].update(backbone)
    return {CONFIG_NAME: json.dumps(config).encode(), WEIGHTS_NAME: (directory / WEIGHTS_NAME).read_bytes()}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache, offline mode on (set after huggingface_hub's import, as a user's script may), and any
    request to the Hub a test failure."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("a request to the Hub was made")

    for name in ("get_hf_file_metadata", "http_get"):
        monkeypatch.setattr(huggingface_hub.file_download, name, no_network)
    return cache


@pytest.fixture
def recorded_hub(monkeypatch) -> list[tuple[str, tuple, dict]]:
    """Online mode, with HfApi's repo creation and commit replaced by recorders: (method, args, kwargs), where a
    commit's args are the repo id and {path in repo: content}, in the commit's order."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", (repo_id,), kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):  # read now, as the upload would
        calls.append(("create_commit", (repo_id, {op.path_in_repo: _read(op) for op in operations}), kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{MAIN}")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    return calls


def _read(operation) -> bytes:
    assert isinstance(operation, huggingface_hub.CommitOperationAdd)
    with operation.as_file() as f:
        return f.read()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- loading by repo id ----------------------------------------------------------------------------------------


def test_a_projector_loads_by_repo_id_and_revision_from_the_offline_cache(saved_llava, hub_cache):
    trained = projector_files(saved_llava.projector)
    zeros = {k: torch.zeros_like(v) for k, v in saved_llava.aim.projector.state_dict().items()}
    cache_repo(hub_cache, "org/proj", {**trained, WEIGHTS_NAME: save(zeros)}, MAIN)
    cache_repo(hub_cache, "org/proj", trained, V1, refs=("v1",))
    aim = AIM.from_pretrained(saved_llava.model, projector="org/proj", projector_revision="v1")
    assert same_weights(aim.projector, saved_llava.aim.projector)
    model, processor = saved_llava.aim.model, load_processor(saved_llava.model)
    assert same_weights(AIM(model, processor, projector="org/proj@v1").projector, saved_llava.aim.projector)
    assert not same_weights(AIM(model, processor, projector="org/proj").projector, saved_llava.aim.projector)


def test_a_revision_not_in_the_offline_cache_is_one_clear_line(saved_llava, hub_cache):
    cache_repo(hub_cache, "org/proj", projector_files(saved_llava.projector), MAIN, refs=("main", "v1"))
    with pytest.raises(AIMError) as error:
        AIM.from_pretrained(saved_llava.model, projector="org/proj", projector_revision="v2")
    message = str(error.value)
    assert "\n" not in message
    assert (
        "org/proj@v2" in message and "HF_HUB_OFFLINE" in message and "cached revisions: main, v1" in message
    )


@pytest.mark.parametrize("weights", ["corrupt", "not cached"])
def test_a_projector_for_another_backbone_is_refused_before_its_weights_are_read(
    saved_llava, hub_cache, monkeypatch, weights
):
    files = projector_files(saved_llava.projector, model_type="qwen2_vl", name_or_path="Qwen/Qwen2-VL-2B")
    files[WEIGHTS_NAME] = b"not safetensors"
    if weights == "not cached":
        del files[WEIGHTS_NAME]  # fetching it offline would fail with a cache error instead
    cache_repo(hub_cache, "org/qwen-proj", files, MAIN)
    read = []
    monkeypatch.setattr("aim_icl.core.projector.load_file", lambda *a, **k: read.append(a))
    model, processor = saved_llava.aim.model, load_processor(saved_llava.model)
    with pytest.raises(AIMError, match="belongs to another backbone") as error:
        AIM(model, processor, projector="org/qwen-proj")
    message = str(error.value)
    assert "\n" not in message and not read
    assert "qwen2_vl 'Qwen/Qwen2-VL-2B'" in message and "not llava" in message and "org/qwen-proj" in message


def test_projector_flag_takes_a_repo_id_on_model_and_world_verbs(saved_llava, hub_cache, tmp_path, capsys):
    cache_repo(hub_cache, "org/proj", projector_files(saved_llava.projector), MAIN)
    image = tmp_path / "q.png"
    tiny_image(0).save(image)
    args = ["generate", "--image", str(image), "--prompt", "question: what? answer:", "--max-new-tokens", "2"]
    assert main([*args, "--model", str(saved_llava.model), "--projector", "org/proj", "--mode", "aim"]) == 0
    capsys.readouterr()
    # the world verbs' path (no --model) hands a repo id to the same loader: its backbone check refuses this one
    assert main([*args, "--projector", "org/proj"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar
    assert err.startswith(
        "aim-icl generate: error: projector from Hub repo org/proj belongs to another backbone"
    )


def test_a_local_path_and_a_revision_do_not_mix(saved_llava):
    with pytest.raises(AIMError, match="projector_revision='v1' is for a Hub projector"):
        AIM.from_pretrained(saved_llava.model, projector=saved_llava.projector, projector_revision="v1")
    with pytest.raises(AIMError, match="give the revision of org/proj once"):
        AIM.from_pretrained(saved_llava.model, projector="org/proj@v1", projector_revision="v2")


# -- model cards -----------------------------------------------------------------------------------------------


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, flags=re.S)
    assert match, "the card starts with YAML metadata between --- lines"
    return yaml.safe_load(match.group(1))


@pytest.fixture
def trained_dir(saved_llava, tmp_path) -> Path:
    """A projector directory as `aim-icl train` leaves it: projector files plus its config and summary."""
    from aim_icl.train.config import TrainConfig, config_to_dict

    directory = saved_llava.aim.save_projector(tmp_path / "trained")
    config = config_to_dict(TrainConfig(model="llava-hf/llava-1.5-7b-hf", output=str(directory), seed=7))
    config["data"].update(paths=["hf://datasets/org/docs/part-0.jsonl", "/local/more.jsonl"], max_shots=16)
    (directory / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = {"steps": 1000, "samples": 8000, "documents": 7000, "seconds": 123.4}
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


def result_rows() -> list[dict]:
    rows = []
    for mode, shots, value in [("zero", 0, 0.25), ("text", 4, 0.5), ("aim", 4, 0.75), ("aim", 16, 0.875)]:
        row = dict.fromkeys(RESULT_ROW_FIELDS, 1.0)
        row.update(task="vqav2", mode=mode, shots=shots, metric="vqa_accuracy", value=value, std=0.01)
        rows.append({**row, "trials": 1 if shots == 0 else 3, "fits": True, "values": [value]})
    return rows


def test_hub_card_writes_yaml_metadata_training_settings_and_the_eval_table(trained_dir, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(result_rows()))
    out = tmp_path / "card.md"
    argv = ["hub", "card", str(trained_dir), "--results", str(results), "--out", str(out)]
    assert main([*argv, "--repo-id", "org/proj", "--dataset", "org/extra"]) == 0
    card = out.read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "aim-icl" and "aim-icl" in meta["tags"]
    assert meta["base_model"] == "llava-hf/llava-1.5-7b-hf"  # from the training record (the tiny's is a path)
    assert meta["datasets"] == ["org/extra"] and "license" not in meta
    for shown in ("| model type | llava |", "| kind | residual |", "| optimizer steps | 1000 |", "| seed | 7 |",
                  "| demos per sample | 1–16 |", "| steps trained | 1000 |", 'projector="org/proj"'):  # fmt: skip
        assert shown in card
    assert "/local/more.jsonl" not in card and str(trained_dir) not in card  # local paths stay private
    usage = re.search(r"## Usage\n\n```python\n(.*?)```", card, flags=re.S).group(1)
    compile(usage, "usage", "exec")  # valid Python, five statements, laid out as ruff formats it
    assert [bool(line) for line in usage.splitlines()] == [True, False, True, True, True, True]
    # the evaluation table: exactly the results file's rows, in order
    table = [line for line in card.splitlines() if line.startswith("| vqav2 |")]
    assert [line.split(" | ")[1:3] for line in table] == [[r["mode"], str(r["shots"])] for r in result_rows()]
    assert markdown_table(result_rows()) in card


def test_card_datasets_come_from_hub_paths_of_the_training_data(trained_dir):
    meta = front_matter(render_card(read_saved(trained_dir)))
    assert meta["datasets"] == ["org/docs"]


def test_a_file_that_is_not_eval_results_is_one_line(trained_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"task": "x"}]))
    assert main(["hub", "card", str(trained_dir), "--results", str(bad)]) == 2
    assert "is not an aim-icl eval results.json" in capsys.readouterr().err


def test_the_shipped_world_projector_has_its_card_naming_the_shipped_backbone():
    from aim_icl.bank.fingerprint import backbone_fingerprint
    from aim_icl.world.checkpoint import load_shipped

    card = (PROJECTOR_DIR / CARD_NAME).read_text()
    assert front_matter(card)["library_name"] == "aim-icl"
    assert "| kind | gated |" in card and "| steps trained | 1500 |" in card
    assert "| fast_binding | aim | 16 | likelihood_accuracy |" in card  # its evaluation table
    assert backbone_fingerprint(load_shipped())["weights_hash"] in card
    check_fingerprint(PROJECTOR_DIR)  # a README beside the weights leaves the shipped weights' check intact
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"checkpoint/*/*"' in pyproject  # the card ships in the wheel beside the weights


# -- pushing ---------------------------------------------------------------------------------------------------


def test_push_from_python_commits_weights_config_and_card(saved_llava, recorded_hub):
    url = push_projector_to_hub(saved_llava.aim, "org/proj", private=True, commit_message="first")
    assert url.endswith(f"/commit/{MAIN}")
    (_, repo, repo_kwargs), (_, (repo_id, files), commit_kwargs) = recorded_hub
    assert repo == ("org/proj",) and repo_kwargs == {"private": True, "exist_ok": True}
    assert repo_id == "org/proj" and commit_kwargs["commit_message"] == "first"
    assert list(files) == [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME]
    assert json.loads(files[CONFIG_NAME])["backbone"]["model_type"] == "llava"
    card = files[CARD_NAME].decode()
    from aim_icl.bank.fingerprint import backbone_fingerprint

    assert backbone_fingerprint(saved_llava.aim)["weights_hash"] in card  # the backbone's fingerprint


def test_what_is_pushed_loads_back_by_repo_id(saved_llava, trained_dir, recorded_hub, tmp_path, monkeypatch):
    assert main(["hub", "push", str(saved_llava.projector), "org/proj", "--base-model", "org/base"]) == 0
    (_, (_, files), _) = recorded_hub[1]
    # the projector was saved from a model in a local folder: the uploaded config names the Hub base instead
    assert json.loads(files[CONFIG_NAME])["backbone"]["name_or_path"] == "org/base"
    cache = tmp_path / "cache"
    cache_repo(cache, "org/proj", {**files, **projector_files(saved_llava.projector)}, MAIN)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = saved_llava.aim.model, load_processor(saved_llava.model)
    assert same_weights(AIM(model, processor, projector="org/proj").projector, saved_llava.aim.projector)


def test_hub_push_dry_run_lists_the_commit_and_uploads_nothing(trained_dir, recorded_hub, capsys):
    assert main(["hub", "push", str(trained_dir), "org/proj", "--dry-run"]) == 0
    listed = re.findall(r"^  (\S+)  ([\d,]+) bytes$", capsys.readouterr().out, flags=re.M)
    assert [name for name, _ in listed] == [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME]
    assert int(listed[0][1].replace(",", "")) == (trained_dir / WEIGHTS_NAME).stat().st_size
    assert recorded_hub == []


def test_an_edited_card_in_the_directory_is_uploaded_as_it_is(trained_dir, recorded_hub):
    assert main(["hub", "card", str(trained_dir)]) == 0
    edited = (
        (trained_dir / CARD_NAME).read_text().replace("# license: set one before publishing", "license: mit")
    )
    (trained_dir / CARD_NAME).write_text(edited)
    assert main(["hub", "push", str(trained_dir), "org/proj", "--private"]) == 0
    (_, _, repo_kwargs), (_, (_, files), _) = recorded_hub
    assert repo_kwargs["private"] is True
    card = files[CARD_NAME].decode()
    assert card == edited and front_matter(card)["license"] == "mit"


def test_push_refuses_offline_mode_and_bad_repo_ids_in_one_line(
    trained_dir, recorded_hub, monkeypatch, capsys
):
    assert main(["hub", "push", str(trained_dir), "not a repo"]) == 2
    assert "is not a Hub repo id" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["hub", "push", str(trained_dir), "org/proj"]) == 2
    assert "offline mode is on" in capsys.readouterr().err and recorded_hub == []


def test_train_push_to_hub_uploads_the_trained_projector(saved_llava, recorded_hub, tmp_path, capsys):
    from aim_icl.train.synthetic import dax_documents, write_corpus

    write_corpus(tmp_path / "data", "wds", dax_documents(8, seed=5, pairs=3), shards=1)
    output = tmp_path / "out"
    argv = ["train", "--model", str(saved_llava.model), "--data", str(tmp_path / "data" / "shard-0000.tar"),
            "--format", "wds", "--output", str(output), "--max-steps", "1", "--batch-size", "2", "--max-shots",
            "2", "--fit-demos", "8", "--checkpoint-every", "0", "--log-with", "none", "--cpu"]  # fmt: skip
    assert main([*argv, "--push-to-hub", "org/trained", "--hub-commit-message", "trained"]) == 0
    assert f"pushed {output} to org/trained" in capsys.readouterr().out
    (_, (repo_id, files), kwargs) = recorded_hub[1]
    assert repo_id == "org/trained" and kwargs["commit_message"] == "trained"
    card = files[CARD_NAME].decode()
    assert "| optimizer steps | 1 |" in card and "| steps trained | 1 |" in card


def test_train_push_to_hub_fails_before_training_when_offline(saved_llava, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["train", "--model", str(saved_llava.model), "--data", "x.jsonl", "--output", str(tmp_path / "o")]
    assert main([*argv, "--push-to-hub", "org/trained"]) == 2
    assert "offline mode is on" in capsys.readouterr().err and not (tmp_path / "o").exists()
