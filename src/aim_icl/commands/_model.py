"""The one way a verb gets its model: a directory or hub id, or by default the embedded world model (no download)."""

from __future__ import annotations

import argparse

MODEL_HELP = "model directory or hub id, loaded with transformers (default: the embedded world model)"


def add_model_arguments(parser: argparse.ArgumentParser, projector: bool = True) -> None:
    """--model, and --projector where the verb uses one."""
    parser.add_argument("--model", help=MODEL_HELP)
    if projector:
        parser.add_argument(
            "--projector",
            help="projector directory written by save_projector / aim-icl train, or a Hugging Face Hub repo "
            "org/name[@revision] (default without --model: the world model's own)",
        )


def fresh_projector(model: str | None, projector: str | None) -> bool:
    """Whether `load_aim(model, projector)` gives an untrained projector (a model of the user's, no projector)."""
    return model is not None and projector is None


def load_aim(
    model: str | None,
    projector: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    with_projector: bool = True,
    **aim_kwargs,
):
    """`model` with `projector` (None: a fresh one) as an `AIM` on `device`; without `model`, the shipped world model
    with its trained projector (`projector` overrides it). `dtype` names a torch dtype ("auto"/None: the
    checkpoint's); `aim_kwargs` (e.g. `layer`) go to `AIM.from_pretrained`."""
    from aim_icl.core.aim import AIM
    from aim_icl.core.dtypes import torch_dtype
    from aim_icl.world.checkpoint import load_shipped

    if dtype not in (None, "auto"):
        aim_kwargs["dtype"] = torch_dtype(dtype)
    if model is None:
        aim = load_shipped(None, projector, with_projector=with_projector, **aim_kwargs)
    else:
        aim = AIM.from_pretrained(model, projector=projector if with_projector else None, **aim_kwargs)
    if device is not None:
        aim.model.to(device)
        aim.projector.to(device)
    return aim


def add_demo_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """--demo IMAGE TEXT, repeatable: the demonstrations a verb reads."""
    parser.add_argument("--demo", nargs=2, action="append", default=[], metavar=("IMAGE", "TEXT"), help=help)


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """--workers N: processes preparing images and prompts ahead of the model (`aim_icl.core.pipeline`)."""
    parser.add_argument(
        "--workers",
        type=int,
        help="processes that load images and build prompts ahead of the model "
        "(default: the cores less one, at most 8; 0: in the model's thread)",
    )
