"""What a saved projector says about itself: its file names, its config and the backbone it is bound to.

Free of torch, so model cards and Hub uploads (`aim_icl.hub`) can read a saved projector without loading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from aim_icl.core.hub_files import is_repo_id
from aim_icl.errors import AIMError

CONFIG_NAME = "projector_config.json"
WEIGHTS_NAME = "projector.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BackboneSignature:
    """What a projector is bound to: loading it onto a backbone with another signature is refused."""

    model_type: str
    hidden_size: int  # width of the hidden states the projector reads
    embed_size: int  # width of the input embeddings it writes
    name_or_path: str = ""

    def mismatch(self, other: BackboneSignature) -> str | None:
        """A human-readable difference, or None when `other` is the same backbone."""
        for key in ("model_type", "hidden_size", "embed_size"):
            if getattr(self, key) != getattr(other, key):
                return f"{key} {getattr(self, key)!r} != {getattr(other, key)!r}"
        mine, theirs = hub_model_id(self.name_or_path), hub_model_id(other.name_or_path)
        if mine and theirs and mine != theirs:
            return f"name_or_path {mine!r} != {theirs!r}"
        return None

    def describe(self) -> str:
        """One phrase naming the backbone, e.g. `llava 'llava-hf/llava-1.5-7b-hf' (hidden 4096, embed 4096)`."""
        name = f" {self.name_or_path!r}" if self.name_or_path else ""
        return f"{self.model_type}{name} (hidden {self.hidden_size}, embed {self.embed_size})"


def hub_model_id(name: str | None) -> str | None:
    """`name` when it names a Hub repo (`org/name`, no local path), else None. A local path binds nothing: the
    same model is trained from `build/model` and loaded from `/abs/build/model` or another machine."""
    return name if name and not Path(name).exists() and is_repo_id(name) else None


@dataclass
class ProjectorConfig:
    name: str  # key in PROJECTORS
    backbone: BackboneSignature
    options: dict = field(default_factory=dict)  # constructor keyword arguments
    version: int = FORMAT_VERSION
    layer: int = -1  # the backbone layer whose hidden states it reads (configs before this field: the last)


def load_projector_config(directory: str | Path) -> ProjectorConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise AIMError(f"no {CONFIG_NAME} in {directory}: pass a directory written by aim.save_projector")
    try:
        raw = json.loads(path.read_text())
        return ProjectorConfig(
            name=raw["name"],
            backbone=BackboneSignature(**raw["backbone"]),
            options=raw.get("options", {}),
            version=raw.get("version", FORMAT_VERSION),
            layer=int(raw.get("layer", -1)),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise AIMError(f"{path} is not a valid projector config ({err}); re-save the projector") from None


def check_projector_config(config: ProjectorConfig, expected: BackboneSignature, where: str) -> None:
    """Refuse a projector of a newer format or one bound to another backbone (naming both backbones)."""
    if config.version > FORMAT_VERSION:
        raise AIMError(f"projector {where} has format {config.version}; upgrade aim-icl to load it")
    if (diff := config.backbone.mismatch(expected)) is not None:
        raise AIMError(
            f"projector {where} belongs to another backbone: trained for {config.backbone.describe()}, "
            f"not {expected.describe()} ({diff}); load it onto the model it was trained for"
        )
