"""Resumable checkpoints without pickle: safetensors for tensors, JSON for the rest.

`checkpoints/step-000100/` holds the projector (the same files `save_projector` writes), the optimizer
(`optimizer.safetensors` + `optimizer.json`), `trainer.json` (step, scheduler, world size) and, per process,
`rank-<i>.json` (data position, skip counts) + `rank-<i>.safetensors` (RNG states). A checkpoint is written under a
temporary name and renamed when complete, so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from aim_icl.core.projector import save_projector
from aim_icl.core.projector_config import WEIGHTS_NAME, ProjectorConfig
from aim_icl.errors import AIMError

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"step-(\d+)")


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / CHECKPOINTS / f"step-{step:06d}"


def latest_checkpoint(output: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = [p for p in (output / CHECKPOINTS).glob("step-*") if _NAME.fullmatch(p.name) and p.is_dir()]
    return max(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)), default=None)


def write_shared(
    directory: Path,
    projector: nn.Module,
    projector_config: ProjectorConfig,
    optimizer: torch.optim.Optimizer,
    trainer: dict[str, Any],
) -> None:
    """What every process holds alike (main process only)."""
    save_projector(projector, projector_config, directory)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(directory / "optimizer.safetensors"))
    _write_json(directory / "optimizer.json", meta)
    _write_json(directory / "trainer.json", trainer)


def write_rank(directory: Path, rank: int, state: dict[str, Any]) -> None:
    """One process's data position and counters, plus its RNG states."""
    rng, rng_meta = _rng_states()
    save_file(rng, str(directory / f"rank-{rank}.safetensors"))
    _write_json(directory / f"rank-{rank}.json", {**state, "rng": rng_meta})


def publish(temporary: Path, final: Path, keep: int) -> None:
    """Rename a fully written checkpoint into place, then delete all but the newest `keep`."""
    if final.exists():  # the same step saved again (a resumed run): replace it
        shutil.rmtree(final)
    temporary.rename(final)
    steps = sorted(p for p in final.parent.glob("step-*") if _NAME.fullmatch(p.name))
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(
    directory: Path, rank: int, projector: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights and optimizer state in place, restore this process's RNG; returns (trainer, rank) states."""
    try:
        trainer = json.loads((directory / "trainer.json").read_text())
        state = json.loads((directory / f"rank-{rank}.json").read_text())
        projector.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        meta = json.loads((directory / "optimizer.json").read_text())
        optimizer.load_state_dict(
            _unflatten_optimizer(load_file(str(directory / "optimizer.safetensors")), meta)
        )
        _restore_rng(load_file(str(directory / f"rank-{rank}.safetensors")), state.pop("rng"))
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise AIMError(f"cannot resume from {directory}: {str(err).splitlines()[0]}") from None
    return trainer, state


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, plain = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": plain}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_states() -> tuple[dict[str, torch.Tensor], dict]:
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state()
    tensors = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(internal, dtype=torch.int64),
        "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
    }
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    meta = {"python": [version, gauss], "numpy": [numpy_state[0], *map(_plain, numpy_state[2:])]}
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))
    version, gauss = meta["python"]
    random.setstate((version, tuple(tensors["python"].tolist()), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")
