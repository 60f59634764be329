"""Where work runs and in which dtype: one rule for every verb, `--device auto` and `--dtype auto` included.

`resolve_device("auto")`: the device `accelerate launch` (or torchrun) gave this process, read from the
environment it sets (`ACCELERATE_USE_CPU`, `LOCAL_RANK`), else CUDA, else Apple's MPS, else the CPU. An explicit
device is checked against what this torch can reach, so `--device cuda` on a CPU-only build is one error line
before any model loads. `resolve_dtype("auto", device)`: bfloat16 on a CUDA device that supports it, float32
everywhere else (float16 overflows in several families, and the CPU computes bfloat16 slowly).

accelerate forms a process group from the processes `accelerate launch` or `torchrun` started only when told
that they run on the CPU (`cpu=True`, gloo); otherwise, on a machine without an accelerator, each process would
see itself as a lone single process. So the CPU is chosen whenever it is asked for or nothing else exists.
"""

from __future__ import annotations

import os

from aim_icl.errors import AIMError

AUTO = "auto"
DEVICE_HELP = "torch device: auto (accelerate's under `accelerate launch`, else cuda, else mps, else cpu), cpu, cuda, cuda:1, mps"
DTYPE_HELP = "dtype of the model's weights: auto (bfloat16 on a GPU that has it, else float32), float16, bfloat16, float32"


def resolve_device(requested: str | None = AUTO) -> str:
    """The device to run on: `requested` checked (see `check_device`), or for "auto"/None the first of: this
    process's device under `accelerate launch`/torchrun, cuda, mps, cpu."""
    if requested not in (None, AUTO):
        return check_device(requested)
    import torch

    if _env_true("ACCELERATE_USE_CPU"):
        return "cpu"
    if torch.cuda.is_available():
        local_rank = os.environ.get(
            "LOCAL_RANK"
        )  # set by `accelerate launch` (several processes) and torchrun
        return "cuda" if local_rank is None else f"cuda:{int(local_rank) % torch.cuda.device_count()}"
    if _mps_available():
        return "mps"
    return "cpu"


def check_device(name: str) -> str:
    """`name` if this torch can run on it, else one `AIMError` line saying what to pass instead."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise AIMError(f"{name!r} is not a torch device; use auto, cpu, cuda, cuda:1 or mps") from None
    if device.type == "cpu":
        return name
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch" if torch.version.cuda is None else "torch finds no CUDA GPU"
            raise AIMError(f"device {name!r}: {build} ({torch.__version__}); use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise AIMError(f"device {name!r}: this machine has {count} CUDA device(s), numbered from 0")
        return name
    if device.type == "mps":
        if not _mps_available():
            raise AIMError(f"device {name!r}: MPS is not available here; use --device cpu or auto")
        return name
    module = getattr(torch, device.type, None)  # xpu, npu, ...: their own is_available()
    available = getattr(module, "is_available", None)
    if available is None or not available():
        raise AIMError(f"device {name!r} is not available here; use --device cpu or auto")
    return name


def resolve_dtype(requested: str | None, device: str) -> str:
    """The weights' dtype name: `requested`, or for "auto"/None bfloat16 on a CUDA device that supports it and
    float32 elsewhere."""
    if requested not in (None, AUTO):
        return requested
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def use_cpu(device: str | None = None, requested: bool = False) -> bool:
    """Whether to run on the CPU: asked for (`requested`, a `device` such as "cpu", `ACCELERATE_USE_CPU=1`) or
    no accelerator is present."""
    return (
        requested
        or _env_true("ACCELERATE_USE_CPU")
        or str(device or "").startswith("cpu")
        or not has_accelerator()
    )


def has_accelerator() -> bool:
    import torch

    probe = getattr(torch, "accelerator", None)  # torch >= 2.6: any device type
    return probe.is_available() if probe is not None else torch.cuda.is_available()


def process_state(device: str | None = None):
    """accelerate's shared process state (rank, world size, barrier), created on first call; CPU processes
    (gloo) where `use_cpu(device)`."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(device))


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
