"""Where work runs, CPU or accelerator: one rule for every verb that may run as several processes.

accelerate forms a process group from the processes `accelerate launch` or `torchrun` started only when told
that they run on the CPU (`cpu=True`, gloo); otherwise, on a machine without an accelerator, each process would
see itself as a lone single process. So the CPU is chosen whenever it is asked for or nothing else exists.
"""

from __future__ import annotations

import os


def use_cpu(device: str | None = None, requested: bool = False) -> bool:
    """Whether to run on the CPU: asked for (`requested`, a `device` such as "cpu", `ACCELERATE_USE_CPU=1`) or
    no accelerator is present."""
    from_env = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return requested or from_env or str(device or "").startswith("cpu") or not has_accelerator()


def has_accelerator() -> bool:
    import torch

    probe = getattr(torch, "accelerator", None)  # torch >= 2.6: any device type
    return probe.is_available() if probe is not None else torch.cuda.is_available()


def process_state(device: str | None = None):
    """accelerate's shared process state (rank, world size, barrier), created on first call; CPU processes
    (gloo) where `use_cpu(device)`."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(device))
