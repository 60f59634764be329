"""The arguments every verb declares the same way: --model/--projector (loaded by `aim_icl.models.load_aim`), --demo,
--workers."""

from __future__ import annotations

import argparse

from aim_icl.core.dtypes import FLOAT_DTYPES
from aim_icl.core.placement import AUTO, DEVICE_HELP, DTYPE_HELP
from aim_icl.models import load_aim  # noqa: F401  (re-exported: the verbs load through here)

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


def add_demo_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """--demo IMAGE TEXT, repeatable: the demonstrations a verb reads."""
    parser.add_argument("--demo", nargs=2, action="append", default=[], metavar=("IMAGE", "TEXT"), help=help)


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """--workers N: processes preparing images and prompts ahead of the model (`aim_icl.core.pipeline`)."""
    parser.add_argument(
        "--workers",
        type=int,
        help="processes that load images and build prompts ahead of the model "
        "(default: with a GPU the cores less one, on the CPU half the cores less one, at most 8; "
        "0: in the model's thread)",
    )


# -- argument types: a bad value is argparse's one-line error, before any model loads ----------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"a TCP port is 1-65535, got {value}")
    return value


def torch_device(text: str) -> str:
    """A device name torch understands, or "auto"; whether this machine has it is checked where the model loads
    (`core.placement.resolve_device`): a Ray head node without a GPU may start replicas on GPU nodes."""
    import torch

    if text == AUTO:
        return text
    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device; use auto, cpu, cuda, cuda:1 or mps"
        ) from None
    return text


def add_device_arguments(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """--device and --dtype, both "auto" by default (resolved by `model_placement` before any model loads)."""
    parser.add_argument("--device", type=torch_device, default=AUTO, help=DEVICE_HELP)
    if dtype:
        parser.add_argument("--dtype", choices=(AUTO, *FLOAT_DTYPES), default=AUTO, help=DTYPE_HELP)


def add_alias(parser: argparse.ArgumentParser, flag: str, dest: str, **kwargs) -> None:
    """An old spelling of an option, kept working for one release and left out of --help."""
    parser.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_output_argument(
    parser: argparse.ArgumentParser, help: str, old: str | None = None, required: bool = False, **kwargs
) -> None:
    """--output: one spelling on every verb that writes files; `old`, its former spelling, still works (hidden)
    for one release."""
    where = (
        parser.add_mutually_exclusive_group(required=True) if required else parser
    )  # either spelling counts
    where.add_argument("--output", help=help, **kwargs)
    if old:
        kwargs["default"] = argparse.SUPPRESS
        where.add_argument(old, dest="output", help=argparse.SUPPRESS, **kwargs)


def model_placement(args: argparse.Namespace) -> dict:
    """`load_aim`'s device and dtype from --device and --dtype, "auto" resolved (`core.placement`): a device this
    machine lacks is one error line here, before any data or model is read."""
    from aim_icl.core.placement import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = getattr(args, "dtype", None)
    return {"device": device, "dtype": resolve_dtype(dtype, device) if dtype is not None else None}
