"""Demonstrations, their cached form, queries, and image loading with the documented conversions."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from aim_icl.errors import AIMError

if TYPE_CHECKING:  # tensors only in annotations: importing demos (e.g. for CLI choices) stays free of torch
    import torch

ImageLike = Image.Image | str | Path | bytes
# an image, or a zero-argument callable that makes one (rendered or read only when a prompt needs its pixels)
ImageSource = ImageLike | Callable[[], ImageLike]


@dataclass
class Demo:
    """One image-text demonstration, e.g. `Demo(image, "Question: what colour? Answer: red")`."""

    image: ImageSource | None
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoStates:
    """A demo as the frozen backbone read it: pre-projector hidden states over its text tokens.

    This is what the Demonstration Bank stores; the projector is applied when a prompt is built, so a cache stays
    valid when the projector is retrained. `token_ids` lets the same item serve `text` mode too; `metadata`
    carries the demo's user metadata (id, label, source) through caches and selection; `key` is the demo's
    content key where a bank or cache stored it ("" for a fresh reading).
    """

    hidden: torch.Tensor  # (n_text_tokens, hidden)
    token_ids: torch.Tensor  # (n_text_tokens,)
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str = ""


@dataclass
class Query:
    """One prompt to build: the query image (None: text only) and text, its demos, and the answer to train on.

    `demos` may mix `Demo`, `DemoStates` and fused tensors (n_tokens, embed) (the last two in `aim` mode);
    with `target`, its tokens follow the prompt and carry the loss (`labels`).
    """

    image: ImageSource | None
    text: str
    demos: Sequence[Demo | DemoStates | torch.Tensor] = ()
    target: str | None = None


def as_queries(image, text: str | Sequence[str] | None, demos: Sequence = ()) -> tuple[list[Query], bool]:
    """The queries a call names, and whether it named one query (answered with one value, not a list).

    One: `(image, text, demos)` or a `Query`. Several: a list of `Query`s, or a list of images with a list of
    texts (images None: text only), where `demos` is one list for every query or one list per query.
    """
    listed, demos = isinstance(image, (list, tuple)), list(demos)
    if (
        isinstance(image, Query)
        or (listed and image and isinstance(image[0], Query))
        or (listed and text is None)
    ):
        if text is not None or demos:
            raise AIMError("give queries as Query objects (with their demos) or as image and text, not both")
        queries = [image] if isinstance(image, Query) else list(image)
        if not all(isinstance(q, Query) for q in queries):
            raise AIMError(
                "give a list of Query objects, or a list of images with a list of texts (one each)"
            )
        return queries, isinstance(image, Query)
    if isinstance(text, str):
        if isinstance(image, (list, tuple)):
            raise AIMError("one text with a list of images: give one text per image (a list), or one image")
        return [Query(image, text, demos)], True
    if not isinstance(text, (list, tuple)):
        raise AIMError(f"text must be a string or a list of strings, not {type(text).__name__}")
    images = [None] * len(text) if image is None else list(image)
    if len(images) != len(text):
        raise AIMError(f"give one image per text: {len(images)} images, {len(text)} texts")
    return [Query(i, t, d) for i, t, d in zip(images, text, per_query(demos, len(text)))], False


def per_query(values: Sequence, n: int) -> list[list]:
    """`values` for each of n queries: one list per query (a list of n lists) or one list shared by all."""
    values = list(values)
    if values and all(isinstance(v, (list, tuple)) for v in values):
        if len(values) != n:
            raise AIMError(f"give one list per query or one list for all: {len(values)} lists, {n} queries")
        return [list(v) for v in values]
    return [values] * n


def load_image(image: ImageSource) -> Image.Image:
    """Open an image and convert it to 8-bit RGB: palette, alpha, grey and 16-bit images are converted.

    Alpha is composited on white (what a viewer shows); 16-bit and 32-bit grey are rescaled to 8 bits. A callable
    is called first (a lazily read dataset row, a rendered scene).
    """
    if callable(image):
        image = image()
    if isinstance(image, Image.Image):
        img = image
    else:
        name = "<bytes>" if isinstance(image, bytes) else str(image)
        try:
            img = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
            img.load()
        except FileNotFoundError:
            raise AIMError(f"image not found: {name}") from None
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise AIMError(f"cannot read image {name}: {err}; pass a valid PNG/JPEG/WebP file") from None
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.round().astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
