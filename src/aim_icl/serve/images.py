"""Images from requests: data URLs, or local paths only under directories the operator allows; bounded size."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from aim_icl.core.demo import load_image
from aim_icl.serve.config import ImagePolicy
from aim_icl.serve.errors import RequestError

__all__ = ["ImagePolicy", "fetch_image"]  # the policy lives with the other settings


def fetch_image(url: str, policy: ImagePolicy) -> Image.Image:
    """The RGB image a request's `image_url` names: a `data:image/...;base64,` URL or an allowed local path."""
    if url.startswith("data:"):
        raw = _data_url_bytes(url, policy.max_bytes)
    elif url.startswith(("http://", "https://")):
        raise RequestError("remote image URLs are not fetched; send the image as a data URL (base64)")
    else:
        raw = _local_bytes(url, policy)
    return _decode(raw, policy)


def _data_url_bytes(url: str, max_bytes: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise RequestError("an image data URL must look like data:image/png;base64,<data>")
    if len(payload) * 3 // 4 > max_bytes + 3:  # refuse before decoding
        raise RequestError(f"image is larger than the limit of {max_bytes} bytes", "too_large")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("image data URL holds invalid base64") from None
    if len(raw) > max_bytes:
        raise RequestError(f"image is larger than the limit of {max_bytes} bytes", "too_large")
    return raw


def _check_size(width: int, height: int, policy: ImagePolicy) -> None:
    if width * height > policy.max_pixels:
        raise RequestError(
            f"image has {width}x{height} pixels, over the limit of {policy.max_pixels} pixels", "too_large"
        )
    if max(width, height) > policy.max_aspect * min(width, height):
        raise RequestError(
            f"image is {width}x{height}: its sides differ by more than the limit of {policy.max_aspect:g}:1; "
            "crop or pad it closer to a square"
        )


def _local_bytes(url: str, policy: ImagePolicy) -> bytes:
    if not policy.allowed_dirs:
        raise RequestError(
            "local image paths are disabled on this server; send a data URL, or start it with --allow-dir",
            "forbidden",
        )
    path = Path(unquote(urlparse(url).path) if url.startswith("file://") else url)
    resolved = path.resolve()  # follows symlinks and '..': the real file must be inside an allowed directory
    if not any(resolved.is_relative_to(d.resolve()) for d in policy.allowed_dirs):
        raise RequestError(f"image path {path} is outside the directories this server allows", "forbidden")
    if not resolved.is_file():
        raise RequestError(f"image not found: {path}", "not_found")
    if resolved.stat().st_size > policy.max_bytes:
        raise RequestError(f"image is larger than the limit of {policy.max_bytes} bytes", "too_large")
    return resolved.read_bytes()


def _decode(raw: bytes, policy: ImagePolicy) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))  # reads the header only: the size is known before decoding
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's own limit (89M pixels warns, twice that raises) fires inside `open`, before ours can
        raise RequestError(
            f"image is over the limit of {policy.max_pixels} pixels (Pillow: {err})", "too_large"
        ) from None
    except Exception:
        raise RequestError("image bytes are not a readable image; send PNG, JPEG or WebP") from None
    _check_size(img.width, img.height, policy)
    try:
        img.load()
    except Exception as err:
        raise RequestError(f"cannot decode image: {err}") from None
    return load_image(img)
