"""The shipped checkpoint: where it lives, saving it with a fingerprint, and checking a copy against it.

`fingerprint.json` records the sha256 of every weight file plus the settings and seeds that produced them, so a
changed or re-trained file is detected, and the training that made it can be rerun.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from aim_icl.errors import AIMError

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
MODEL_DIR = CHECKPOINT_DIR / "model"
PROJECTOR_DIR = CHECKPOINT_DIR / "projector"
FINGERPRINT = "fingerprint.json"
# `aim-icl train --config` for the shipped projector
PROJECTOR_TRAINING = Path(__file__).parent / "projector.yaml"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("*.safetensors"))


def write_fingerprint(directory: Path, record: dict) -> dict:
    """Hash the weight files of `directory` and write them with `record` (settings, seeds, metrics)."""
    directory = Path(directory)
    files = {p.name: sha256(p) for p in weight_files(directory)}
    if not files:
        raise AIMError(f"no .safetensors files in {directory} to fingerprint")
    fingerprint = {"sha256": files, **record}
    (directory / FINGERPRINT).write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    return fingerprint


def check_fingerprint(directory: Path) -> dict:
    """The recorded fingerprint, after checking every weight file against it (AIMError on any mismatch)."""
    directory = Path(directory)
    path = directory / FINGERPRINT
    if not path.is_file():
        raise AIMError(f"no {FINGERPRINT} in {directory}: save checkpoints with aim-icl world pretrain")
    fingerprint = json.loads(path.read_text())
    found = {p.name: sha256(p) for p in weight_files(directory)}
    if found != fingerprint["sha256"]:
        raise AIMError(
            f"weights in {directory} do not match {FINGERPRINT}; re-run the training or restore the files"
        )
    return fingerprint


def save_model(model, processor, directory: Path, record: dict) -> Path:
    """Write model + processor (HF format, safetensors) and the fingerprint, replacing an older save whole."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    write_fingerprint(staging, record)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)  # only a complete save replaces the old one
    return directory


def load_shipped(
    model: Path | None = None, projector: Path | str | None = None, with_projector: bool = True, **hf_kwargs
):
    """The world model with its AIM projector (default: the shipped ones), as an `AIM`; without the projector,
    `aim` mode gets an unfitted one (the other modes do not use it). `hf_kwargs` go to `AIM.from_pretrained`.

    Shipped files are checked against their fingerprints; a directory of your own needs only what its writer
    wrote (`aim-icl world pretrain` for a model, `aim-icl train` or `save_projector` for a projector); a projector
    may also be a Hub repo id (`org/name[@revision]`)."""
    from aim_icl.core.aim import AIM
    from aim_icl.core.hub_files import hub_source

    model_dir = _checked(model, MODEL_DIR, "config.json", "world model", "aim-icl world pretrain --output")
    projector_dir = None
    if with_projector and projector is not None and hub_source(projector) is not None:
        projector_dir = str(projector)  # a Hub repo: loading checks it, before its weights are fetched
    elif with_projector:
        projector_dir = _checked(
            projector, PROJECTOR_DIR, "projector_config.json", "projector", "aim-icl train --output"
        )
    return AIM.from_pretrained(model_dir, projector=projector_dir, **hf_kwargs)


def _checked(given: Path | None, shipped: Path, marker: str, what: str, writer: str) -> Path:
    if given is None:
        check_fingerprint(shipped)
        return shipped
    if not (Path(given) / marker).is_file():
        raise AIMError(f"no {what} in {given} (no {marker}); pass a directory that `{writer}` wrote")
    return Path(given)


def ship(model: Path, trained_projector: Path, destination: Path = CHECKPOINT_DIR) -> None:
    """Copy a pretrained model and the projector `aim-icl train` made for it into `destination` (the package's
    checkpoint by default), each with its fingerprint; the projector's record is its training config and summary."""
    import yaml

    model, trained_projector, destination = Path(model), Path(trained_projector), Path(destination)
    check_fingerprint(model)
    config_path = trained_projector / "projector_config.json"
    if not config_path.is_file():
        raise AIMError(f"no trained projector in {trained_projector}; pass the --output of `aim-icl train`")
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model, staging / MODEL_DIR.name)
    projector = staging / PROJECTOR_DIR.name
    projector.mkdir()
    config = json.loads(config_path.read_text())
    config["backbone"]["name_or_path"] = ""  # the projector loads wherever the model directory lies
    (projector / config_path.name).write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(trained_projector / "projector.safetensors", projector / "projector.safetensors")
    record = {
        "training": yaml.safe_load((trained_projector / "train_config.yaml").read_text()),
        "summary": json.loads((trained_projector / "summary.json").read_text()),
    }
    record["summary"].pop("output", None)
    write_fingerprint(projector, record)
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)
