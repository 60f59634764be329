"""The server's settings, one dataclass field each, and the `aim-icl serve` flags generated from them.

Every field of `ServerConfig` (and of its `ImagePolicy`) carries its help text and, where it differs from the
field's name, its flag; `add_config_arguments` declares one flag per field with the dataclass default, and
`config_from_args` builds the config back from the parsed flags, so a default is written once. No FastAPI or torch
at import: the CLI's `--help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEDULERS = ("continuous", "static")
DEFAULT_DEMO_TEMPLATE = "{user} {assistant}"  # a chat demo's text (as `serve.chat` lays demos out)


@dataclass(frozen=True)
class ImagePolicy:
    """Limits on one image: its encoded bytes, its pixels and its aspect ratio (both checked before decoding), where
    paths may point.

    The aspect ratio bounds what the processor makes of the image, not only what it reads: processors that scale
    the shorter side to a fixed edge (CLIP's 336 px for LLaVA) turn a 1x100,000 image of 390 bytes into a
    336x33,600,000 one. At 50:1 that is at most 50 edge^2 pixels (5.6M at 336); processors that bound the longer
    side or the pixel count (Idefics3, Qwen2-VL, fixed-size ones) stay within their own bound.
    """

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    allowed_dirs: tuple[Path, ...] = ()
    max_aspect: float = 50.0  # longer side / shorter side


def _opt(default, help: str, **meta):
    """A field with its flag's help (and optionally `flag`, `type`, `choices`, `env`)."""
    kind = "default_factory" if callable(default) and not isinstance(default, type) else "default"
    return field(**{kind: default}, metadata={"help": help, **meta})


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error line
    return parse


@dataclass(frozen=True)
class ServerConfig:
    """Limits and scheduling of one server (a replica on Ray Serve has the same)."""

    api_key: str | None = _opt(
        None, "bearer key clients must send (env AIM_ICL_API_KEY)", env="AIM_ICL_API_KEY"
    )
    queue_size: int = _opt(
        32, "requests waiting for the model; more get 503 + Retry-After", type=_positive(int)
    )
    max_batch_size: int = _opt(
        8, "rows generated together (a request asking n choices is n rows)", type=_positive(int)
    )
    scheduler: str = _opt(
        "continuous",
        "continuous: a request joins the generating rows at the next step and a finished row leaves at once; "
        "static: a batch runs until its last row ends before the next one starts (for comparison)",
        choices=SCHEDULERS,
    )
    max_n: int = _opt(8, "choices one chat request may ask for (n)", type=_positive(int))
    timeout_s: float = _opt(
        60.0, "seconds per request, queueing included", flag="timeout", type=_positive(float)
    )
    max_body_bytes: int = _opt(32 * 1024 * 1024, "request body bytes; more get 413", type=_positive(int))
    max_header_bytes: int = _opt(16 * 1024, "request line and headers; more get 431", type=_positive(int))
    read_timeout_s: float = _opt(
        30.0,
        "seconds to receive a request's headers, and again its body; slower clients get 408",
        flag="read_timeout",
        type=_positive(float),
    )
    max_demos: int = _opt(32, "demonstrations per request or task", type=_positive(int))
    max_new_tokens: int = _opt(64, "new tokens when a request names no max_tokens", type=_positive(int))
    max_new_tokens_cap: int = _opt(1024, "the most max_tokens a request may ask for", type=_positive(int))
    max_tasks: int = _opt(100, "tasks registered at once; more get 429", type=_positive(int))
    max_bank_demos: int = _opt(
        10_000, "demos the bank may hold before requests stop adding to it", type=_positive(int)
    )
    demo_template: str = _opt(
        DEFAULT_DEMO_TEMPLATE,
        "chat demo text from {user} and {assistant} (default: the two joined by a space)",
    )
    images: ImagePolicy = field(default_factory=ImagePolicy)


IMAGE_FLAGS = {  # ImagePolicy's fields as flags: (flag, help, type)
    "max_bytes": ("max_image_bytes", "bytes of one image; more get 413", _positive(int)),
    "max_pixels": (
        "max_image_pixels",
        "pixels of one image (read before decoding); more get 413",
        _positive(int),
    ),
    "max_aspect": ("max_image_aspect", "longer side over shorter side of an image", _positive(float)),
    "allowed_dirs": ("allow_dir", "directory local image paths may be in (repeatable)", None),
}


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per `ServerConfig` field (dashes for underscores), with the field's default and help."""
    hints = typing.get_type_hints(ServerConfig)
    for f in dataclasses.fields(ServerConfig):
        if f.name == "images":
            continue
        meta = f.metadata
        default = os.environ.get(meta["env"], f.default) if "env" in meta else f.default
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": _help(meta["help"], f.default)}
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        elif "type" in meta:
            kwargs["type"] = meta["type"]
        elif hints[f.name] not in (str, str | None):
            kwargs["type"] = hints[f.name]
        parser.add_argument(_flag(meta.get("flag", f.name)), **kwargs)
    for f in dataclasses.fields(ImagePolicy):
        flag, help, kind = IMAGE_FLAGS[f.name]
        if f.name == "allowed_dirs":
            parser.add_argument(_flag(flag), dest=f.name, action="append", default=[], help=help)
        else:
            parser.add_argument(
                _flag(flag), dest=f.name, type=kind, default=f.default, help=_help(help, f.default)
            )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The config the parsed flags describe (checked where flags alone cannot be: see `commands.serve`)."""
    images = ImagePolicy(
        **{
            f.name: getattr(args, f.name) for f in dataclasses.fields(ImagePolicy) if f.name != "allowed_dirs"
        },
        allowed_dirs=tuple(Path(d) for d in args.allowed_dirs),
    )
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig) if f.name != "images"}
    return ServerConfig(**values, images=images)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(text: str, default) -> str:
    return text if default is None or "default" in text else f"{text} (default {default})"
