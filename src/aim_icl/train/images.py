"""Opening a corpus image however a row gives it: a path (relative to an image root), file:// URL, data: URI,
raw bytes, base64 text, or a `{"bytes": ..., "path": ...}` struct (Hugging Face datasets' Image column)."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from aim_icl.core.demo import load_image
from aim_icl.errors import AIMError
from aim_icl.train.documents import SkipItem

_MAX_PATH = 4096  # longer strings cannot be paths: they are inline base64


def open_image(value, image_root: Path | None = None) -> Image.Image:
    """The image as 8-bit RGB, or `SkipItem` ("missing image", "remote image", "bad image")."""
    if value is None:
        raise SkipItem("missing image")
    if isinstance(value, dict):
        inline = value.get("bytes")
        return open_image(inline if inline else value.get("path"), image_root)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _decode(bytes(value), "<bytes>")
    if not isinstance(value, str):
        raise SkipItem("bad image", f"unsupported image value {type(value).__name__}")
    if value.startswith(("http://", "https://")):
        raise SkipItem("remote image", f"{value[:80]} (download the images and pass --image-root)")
    if value.startswith("data:"):
        return _decode(_b64(value.partition(",")[2]), value[:30])
    path = _local_path(value, image_root)
    if path is not None:
        return _decode(path, str(path))
    if len(value) > 64:  # not a file: maybe inline base64
        return _decode(_b64(value), "<base64>")
    raise SkipItem("missing image", value)


def _local_path(value: str, image_root: Path | None) -> Path | None:
    if value.startswith("file://"):
        value = unquote(urlparse(value).path)
    if len(value) > _MAX_PATH:
        return None
    path = Path(value)
    if not path.is_absolute() and image_root is not None:
        path = image_root / path
    try:
        return path if path.is_file() else None
    except OSError:  # e.g. a name too long for the file system
        return None


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SkipItem("missing image", "neither a file nor base64") from None


def _decode(source: bytes | Path, name: str) -> Image.Image:
    try:
        return load_image(source)
    except AIMError as err:
        raise SkipItem("bad image", str(err)) from None
    except (Image.DecompressionBombError, MemoryError):
        raise SkipItem("bad image", f"{name} is too large") from None
