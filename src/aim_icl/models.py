"""The one way the CLI and the server get a model: a directory or hub id, or by default the embedded world model
(no download). It sits beside `world` (whose shipped checkpoint is the default), below `commands` and `serve`."""

from __future__ import annotations


def load_aim(
    model: str | None,
    projector: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    with_projector: bool = True,
    **aim_kwargs,
):
    """`model` with `projector` (None: a fresh one) as an `AIM` on `device` ("auto" resolved by
    `core.placement.resolve_device`, on the machine that loads it; None: left where transformers put it); without
    `model`, the shipped world model
    with its trained projector (`projector` overrides it). `dtype` names a torch dtype ("auto"/None: the
    checkpoint's); `aim_kwargs` go to `AIM.from_pretrained`: its own (`layer`, ...) and the Hub options
    (`revision`, `projector_revision`, `token`, `cache_dir`, `trust_remote_code`, `local_files_only`,
    `subfolder`), which reach the model and its processor alike (the projector: token, cache, offline)."""
    from aim_icl.core.aim import AIM
    from aim_icl.core.dtypes import torch_dtype
    from aim_icl.core.placement import resolve_device
    from aim_icl.world.checkpoint import load_shipped

    device = None if device is None else resolve_device(device)  # a device this torch lacks: one line, first
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
