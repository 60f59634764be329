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
