"""The `aim_icl` model's `--model_args`, checked before any model loads: a bad value is one `AIMError` line.

lmms-eval parses `key=value,...` (numbers become int or float, true/false bool) and adds its own `--batch_size`,
`--max_batch_size` and `--device`; a key given in `--model_args` wins over lmms-eval's flag.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from aim_icl.core.modes import MODES
from aim_icl.errors import AIMError

SELECTIONS = ("random", "similarity", "text_similarity", "support")
BANK_SELECTIONS = ("similarity", "text_similarity")  # rank the pool by embeddings the bank stores
POOL_SIZE = 2048  # fewshot documents demos are drawn from (`aim-icl eval --pool-size`'s default)
IGNORED = ("max_batch_size",)  # lmms-eval passes it to every model; batches here never grow on their own


@dataclass(frozen=True)
class Options:
    """What `--model_args` says, with defaults.

    `pretrained`: a model directory or Hub id (None: the embedded world model); `projector`: a projector directory
    or Hub repo `org/name` (default with no `pretrained`: the world model's own). `num_fewshot` None takes the
    task's (`--num_fewshot` or its YAML). `fewshot_split` None: the task's fewshot, training, validation or (query
    itself left out) test split. `selection` None: `support` where the task's documents list their own demos (a
    `support_ids` column), else `random`.
    """

    pretrained: str | None = None
    projector: str | None = None
    mode: str = "aim"
    num_fewshot: int | None = None
    fewshot_split: str | None = None
    selection: str | None = None
    seed: int = 0
    pool_size: int = POOL_SIZE
    bank: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None  # None ("auto"): the evaluation harness's default for the device
    workers: int | None = None  # None: `core.pipeline.default_workers`

    @classmethod
    def parse(cls, **kwargs) -> Options:
        """Options from `lmms.__init__`'s keyword arguments (strings, numbers or booleans)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known - set(IGNORED))
        if unknown:
            raise AIMError(
                f"aim_icl takes no model_arg {', '.join(unknown)}; it takes: {', '.join(sorted(known))}"
            )
        values = {k: v for k, v in kwargs.items() if k in known and v is not None and v != ""}
        for name in ("num_fewshot", "seed", "pool_size", "workers"):
            if name in values:
                values[name] = _integer(name, values[name])
        if "batch_size" in values:
            values["batch_size"] = _batch_size(values["batch_size"])
        if "bank" in values:
            values["bank"] = Path(str(values["bank"]))
        for name in ("pretrained", "projector", "mode", "fewshot_split", "selection", "device", "dtype"):
            if name in values:
                values[name] = str(values[name])
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        if self.mode not in MODES:
            raise AIMError(f"mode={self.mode} is not a mode; use one of {', '.join(MODES)}")
        if self.selection is not None and self.selection not in SELECTIONS:
            raise AIMError(
                f"selection={self.selection} is not a selection; use one of {', '.join(SELECTIONS)}"
            )
        if self.selection in BANK_SELECTIONS and self.bank is None:
            raise AIMError(
                f"selection={self.selection} needs bank=FILE (a Demonstration Bank file, created if missing): "
                "the bank ranks the pool by what it stores"
            )
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise AIMError(f"num_fewshot must be 0 or more, got {self.num_fewshot}")
        if self.pool_size < 1 or (self.workers is not None and self.workers < 0):
            raise AIMError("pool_size must be at least 1 and workers 0 or more")
        if self.mode == "aim" and self.pretrained is not None and self.projector is None:
            raise AIMError(
                f"mode=aim on pretrained={self.pretrained} needs projector=DIR or org/name (a trained AIM "
                "projector); without one use mode=text or mode=icl"
            )


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise AIMError(f"{name} must be a whole number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise AIMError(f"{name} must be a whole number, got {value!r}") from None
    if number != int(number):
        raise AIMError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _batch_size(value) -> int | None:
    """lmms-eval's `--batch_size`: N, or "auto"/"auto:N" (here: the harness's default for the device)."""
    if isinstance(value, str) and value.startswith("auto"):
        return None
    size = _integer("batch_size", value)
    if size < 1:
        raise AIMError(f"batch_size must be at least 1, got {size}")
    return size
