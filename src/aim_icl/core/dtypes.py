"""Dtypes by name, in one place: model weights, stored hidden states, training caches, bank columns.

No torch at import: the CLI declares its `--dtype` choices from `FLOAT_DTYPES` before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aim_icl.errors import AIMError

if TYPE_CHECKING:
    import torch

FLOAT_DTYPES = ("float16", "bfloat16", "float32")  # what weights, caches and banks may be held in
STORED_DTYPES = (*FLOAT_DTYPES, "int64", "int32")  # what a bank's tensor columns may hold


def torch_dtype(name: str, allowed: Sequence[str] = FLOAT_DTYPES) -> torch.dtype:
    """The torch dtype called `name` ("float16", ...), refused unless it is one of `allowed`."""
    if name not in allowed:
        raise AIMError(f"dtype must be one of {', '.join(allowed)}, not {name!r}")
    import torch

    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """The name configs, files and fingerprints store: `float16` for `torch.float16`."""
    return str(dtype).removeprefix("torch.")
