"""Training configuration: small nested dataclasses, loadable from YAML, every field also a command-line flag.

Precedence: dataclass defaults < YAML file < flags given on the command line. YAML may nest (`data:`, `optim:`)
or name any field at the top level, with underscores or dashes; unknown keys are warned about, not fatal
(a config written by a newer version still loads). Keys renamed in 0.2 (`backbone_dtype`, `cpu`) are still read,
as YAML keys and as hidden flags, for one release.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aim_icl.core.dtypes import FLOAT_DTYPES
from aim_icl.core.placement import resolve_device
from aim_icl.errors import AIMError

logger = logging.getLogger(__name__)


def _opt(default, help: str, **meta):
    """A field with its command-line help (and optionally `flag`, `nargs`, `const`)."""
    kind = "default_factory" if callable(default) else "default"
    return field(**{kind: default}, metadata={"help": help, **meta})


@dataclass
class DataConfig:
    paths: list[str] = _opt(list, "data files, directories, glob or brace patterns", flag="data")
    format: str = _opt("obelics", "corpus layout: obelics, mmc4 or wds")
    image_root: str | None = _opt(None, "folder that relative image paths / MMC4 image names are under")
    min_sim: float | None = _opt(None, "MMC4: drop image-text matches below this similarity")
    max_text_tokens: int = _opt(64, "cut each pair's text to this many tokens")
    min_shots: int = _opt(1, "fewest demonstrations per training sample (>= 1)")
    max_shots: int = _opt(4, "most demonstrations per training sample")
    samples_per_document: int = _opt(1, "training samples (distinct targets) drawn from each document")
    targets: str = _opt(
        "random", "a sample's target pair: random (any after min_shots) or last (the last pair)"
    )
    demos: str = _opt(
        "window", "its demos: window (k in [min_shots, max_shots] pairs before it) or all (up to max_shots)"
    )
    prompt: str = _opt("", "query text before the target (web documents have none)")
    shuffle_files: bool = _opt(True, "read the data files in a new seeded order each epoch")


@dataclass
class OptimConfig:
    max_steps: int = _opt(1000, "optimizer steps to train for")
    batch_size: int = _opt(8, "samples per process per micro-batch")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    lr: float = _opt(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    warmup_steps: int = _opt(100, "linear warmup steps before the cosine decay")
    min_lr_ratio: float = _opt(0.0, "the cosine ends at lr * min_lr_ratio")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0: off)")
    identity_weight: float = _opt(
        0.0,
        "weight of a loss keeping each fused token decodable as its own text token (0: the LM loss alone)",
    )
    text_match_weight: float = _opt(
        0.0,
        "weight of a KL term pulling the fused prompt's next-token distribution to the text-only prompt's "
        "wherever text predicts the target at least as well (0: off)",
    )


@dataclass
class TrainConfig:
    model: str | None = _opt(None, "model directory or hub id (loaded with transformers)")
    output: str | None = _opt(None, "output directory: the trained projector, checkpoints, logs")
    projector: str | None = _opt(None, "start from this saved projector instead of a fresh one")
    projector_name: str = _opt(
        "gated",
        "kind of a fresh projector: gated (starts exactly as text mode), residual (its copy map fitted on "
        "fit_demos demos first) or linear",
    )
    projector_options: dict[str, Any] = _opt(
        dict, "options of a fresh projector, as a JSON object on the command line (e.g. '{\"mlp_ratio\": 4}')"
    )
    layer: int | None = _opt(
        None, "backbone layer whose hidden states the projector reads (default: --projector's, else the last)"
    )
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = _opt(0, "seed of data order, sampling and initialisation")
    cache: str | None = _opt(None, "demo hidden-state cache: a Demonstration Bank file, or 'memory'")
    cache_dtype: str = _opt("float16", "dtype of cached hidden states: float16, bfloat16 or float32")
    device: str = _opt(
        "auto",
        "auto (accelerate's device, else cuda, else mps, else cpu), cpu (even where a GPU is), cuda or mps",
    )
    mixed_precision: str = _opt("auto", "no, fp16, bf16, or auto (bf16 on a GPU that has it)")
    dtype: str = _opt("auto", "dtype of the frozen backbone's weights: auto follows mixed precision")
    gradient_checkpointing: bool = _opt(False, "recompute the frozen backbone's activations in backward")
    fit_demos: int = _opt(256, "demos the fresh residual projector's copy map is fitted on")
    encode_batch_size: int = _opt(8, "demos read through the backbone per batch")
    workers: int | None = _opt(
        None, "processes preparing images and prompts ahead of the model (default: cores less one; 0: none)"
    )
    checkpoint_every: int = _opt(500, "save a resumable checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = _opt(2, "checkpoints kept (older ones are deleted)")
    log_every: int = _opt(10, "steps between metric lines")
    log_with: str = _opt("auto", "accelerate trackers: auto (TensorBoard when installed), none, or a name")
    resume: str | None = _opt(
        None, "resume from a checkpoint dir (no value: the output's latest)", const="latest"
    )

    def validate(self) -> TrainConfig:
        from aim_icl.train.readers import READERS
        from aim_icl.train.samples import DEMOS, TARGETS

        d, o = self.data, self.optim
        checks = [
            (self.output is not None, "an output directory is required (--output DIR)"),
            (bool(d.paths), "no training data given (--data FILE_OR_PATTERN ...)"),
            (
                d.min_shots >= 1,
                "min_shots must be at least 1: a sample without demos does not train the projector",
            ),
            (d.max_shots >= d.min_shots, f"max_shots ({d.max_shots}) is below min_shots ({d.min_shots})"),
            (d.targets in TARGETS, f"targets must be one of {', '.join(TARGETS)}, not {d.targets!r}"),
            (d.demos in DEMOS, f"demos must be one of {', '.join(DEMOS)}, not {d.demos!r}"),
            (
                d.max_text_tokens >= 1 and d.samples_per_document >= 1,
                "max_text_tokens and samples_per_document must be >= 1",
            ),
            (
                o.max_steps >= 1 and o.batch_size >= 1 and o.grad_accum >= 1,
                "max_steps, batch_size, grad_accum must be >= 1",
            ),
            (o.lr > 0, "lr must be positive"),
            (
                self.cache_dtype in FLOAT_DTYPES,
                f"cache_dtype must be one of {', '.join(FLOAT_DTYPES)}, not {self.cache_dtype!r}",
            ),
            (
                self.dtype in ("auto", *FLOAT_DTYPES),
                f"dtype must be auto or one of {', '.join(FLOAT_DTYPES)}, not {self.dtype!r}",
            ),
            (
                self.device in ("auto", "cpu", "cuda", "mps"),
                f"device must be auto, cpu, cuda or mps, not {self.device!r} (training places its processes "
                "itself: pick GPUs with CUDA_VISIBLE_DEVICES or accelerate launch --gpu_ids)",
            ),
            (
                self.mixed_precision in ("auto", "no", "fp16", "bf16"),
                "mixed_precision must be auto, no, fp16 or bf16",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise AIMError(message)
        READERS.get(d.format)  # an unknown format fails here, with a suggestion
        resolve_device(self.device)  # a device this torch cannot reach: one line, before any model loads
        _warn_if_warmup_outlasts_the_run(o)
        return self


def _warn_if_warmup_outlasts_the_run(optim: OptimConfig) -> None:
    if optim.warmup_steps >= optim.max_steps:
        logger.warning(
            "warmup_steps %d >= max_steps %d: the learning rate climbs only to %.3g (lr x %.2f) and never decays; "
            "pass --warmup-steps %d (a tenth of the run) or fewer",
            optim.warmup_steps,
            optim.max_steps,
            optim.lr * optim.max_steps / optim.warmup_steps,
            optim.max_steps / optim.warmup_steps,
            optim.max_steps // 10,
        )


SECTIONS: dict[str, type] = {"data": DataConfig, "optim": OptimConfig}
# keys of earlier versions -> (field, value): still read, for one release
RENAMED = {
    "backbone_dtype": lambda value: ("dtype", value),
    "cpu": lambda value: ("device", "cpu" if _coerce("cpu", value, bool) else "auto"),
}


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """A config from nested or flat keys; unknown keys are warned about and ignored."""
    routes = {f.name: (section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    routes.update({f.name: (None, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in SECTIONS})
    values: dict[str | None, dict[str, Any]] = {None: {}, **{s: {} for s in SECTIONS}}
    for key, value in raw.items():
        key = key.replace("-", "_")
        if key in RENAMED and key not in routes:
            key, value = RENAMED[key](value)
        if key in SECTIONS and isinstance(value, dict):
            for sub, sub_value in value.items():
                _route(values, routes, sub.replace("-", "_"), sub_value, section=key)
        elif key != "aim_icl_version":
            _route(values, routes, key, value)
    sections = {s: _build(cls, values[s]) for s, cls in SECTIONS.items()}
    return _build(TrainConfig, values[None], **sections)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < the YAML file at `path` < `overrides` (flat field names, e.g. from the command line)."""
    raw: dict[str, Any] = {}
    if path is not None:
        yaml = _yaml()
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise AIMError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise AIMError(f"config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise AIMError(f"config {path} must be a mapping of option: value")
    flat = _flatten(raw)
    flat.update(overrides or {})
    return config_from_dict(flat)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    from aim_icl import __version__

    return {"aim_icl_version": __version__, **dataclasses.asdict(config)}


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(_yaml().safe_dump(config_to_dict(config), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field (dashes for underscores); unset flags stay out of the namespace."""
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name not in SECTIONS]
    fields += [f for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    hints = {
        **typing.get_type_hints(TrainConfig),
        **{k: v for c in SECTIONS.values() for k, v in typing.get_type_hints(c).items()},
    }
    for f in fields:
        flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
        help_text = f.metadata["help"] + _shown_default(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        hint = hints[f.name]
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is list:
            kwargs["nargs"] = "+"
        elif typing.get_origin(hint) is dict:
            kwargs["type"] = json.loads
        elif "const" in f.metadata:
            kwargs.update(nargs="?", const=f.metadata["const"])
        parser.add_argument(flag, **kwargs)
    hidden = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}  # old spellings (RENAMED), one release
    parser.add_argument("--backbone-dtype", dest="dtype", **hidden)
    parser.add_argument("--cpu", dest="device", action="store_const", const="cpu", **hidden)


def _shown_default(f: dataclasses.Field) -> str:
    """ " (default: X)" for --help (flags default to SUPPRESS, so argparse cannot show the field's default)."""
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value in (None, [], {}, ""):
        return ""
    shown = ("on" if value else "off") if isinstance(value, bool) else value
    return f" (default: {shown})".replace("%", "%%")


def _flatten(raw: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in raw.items():
        if key.replace("-", "_") in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _route(values, routes, key: str, value, section: str | None = None) -> None:
    if key not in routes or (section is not None and routes[key][0] != section):
        where = f"{section}." if section else ""
        logger.warning("ignoring unknown config key %r (not an option of this aim-icl version)", where + key)
        return
    target, name = routes[key]
    values[target][name] = value


def _build(cls: type, values: dict[str, Any], **extra):
    hints = typing.get_type_hints(cls)
    coerced = {name: _coerce(name, value, hints[name]) for name, value in values.items()}
    return cls(**coerced, **extra)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as the field's type (YAML reads `1e-4` as text; flags arrive as text)."""
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise AIMError(f"{name} must be a mapping of option: value, not {value!r}")
        return dict(value)
    base = (
        next((a for a in args if a is not type(None)), hint) if typing.get_origin(hint) is not list else hint
    )
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if base is int:
            number = float(value)
            if isinstance(value, bool) or not number.is_integer():
                raise ValueError
            return int(number)
        if base is float:
            return float(value)
        if typing.get_origin(base) is list:
            return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        return str(value)
    except (TypeError, ValueError):
        raise AIMError(
            f"config option {name!r} expects {getattr(base, '__name__', base)}, got {value!r}"
        ) from None


def _yaml():
    try:
        import yaml
    except ImportError:
        raise AIMError("YAML configs need pyyaml: pip install 'aim-icl[train]'") from None
    return yaml
