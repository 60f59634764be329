"""Procedural 32x32 scenes: one object (shape, colour, size, position) on a noisy background, set by a seed.

A `Scene` is plain data; `render` draws it deterministically (the same scene always gives the same pixels), so
every corpus and task is a pure function of its seed.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
_SCALE = 4  # shapes are drawn at 4x and downsampled: smooth edges at 32 px

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "bar")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (235, 235, 235),
    "cyan": (40, 210, 220),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom")
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "position": POSITIONS}

_RADIUS = {"small": (5.0, 6.5), "large": (8.5, 10.0)}  # pixels at 32 px


@dataclass(frozen=True)
class Scene:
    """One object on a noisy background; `seed` fixes jitter, placement and noise pixels."""

    shape: str
    colour: str
    size: str
    position: str
    noise: float  # background noise standard deviation, 0-255 scale
    seed: int

    @property
    def object(self) -> str:
        """What fast binding names: colour and shape (size, position and noise vary between views)."""
        return f"{self.colour} {self.shape}"

    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} on the {self.position}"

    def render(self) -> Image.Image:
        return _rendered(self).copy()  # each scene drawn once per process: cells and modes reuse it


def sample_scene(rng: random.Random, shape: str | None = None, colour: str | None = None) -> Scene:
    """A random scene; `shape` / `colour` pin the object (a new view of it)."""
    return Scene(
        shape=shape or rng.choice(SHAPES),
        colour=colour or rng.choice(tuple(COLOURS)),
        size=rng.choice(SIZES),
        position=rng.choice(POSITIONS),
        noise=round(rng.uniform(0.0, 24.0), 2),
        seed=rng.getrandbits(31),
    )


@functools.lru_cache(maxsize=1 << 15)  # 32x32 RGB: 3 KiB a scene, 100 MiB at most
def _rendered(scene: Scene) -> Image.Image:
    return render(scene)


def render(scene: Scene) -> Image.Image:
    rng = np.random.default_rng(scene.seed)
    radius = rng.uniform(*_RADIUS[scene.size])
    cx, cy = _centre(scene.position, radius, rng)
    mask = Image.new("L", (IMAGE_SIZE * _SCALE,) * 2, 0)
    _draw_shape(ImageDraw.Draw(mask), scene.shape, cx * _SCALE, cy * _SCALE, radius * _SCALE)
    alpha = (
        np.asarray(mask.resize((IMAGE_SIZE,) * 2, Image.Resampling.BOX), dtype=np.float32)[..., None] / 255
    )
    base = rng.uniform(15, 75) + rng.uniform(-10, 10, size=3)  # dark, slightly tinted background
    background = base + rng.normal(0.0, scene.noise, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    colour = np.asarray(COLOURS[scene.colour], dtype=np.float32) + rng.uniform(-12, 12, size=3)
    pixels = alpha * colour + (1 - alpha) * background  # (32, 32, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")


def _centre(position: str, radius: float, rng: np.random.Generator) -> tuple[float, float]:
    """Object centre: towards `position` on one axis, near the middle on the other."""
    near = rng.uniform(radius + 1, max(radius + 1.5, 12.5))
    far = IMAGE_SIZE - near
    middle = rng.uniform(13.0, 19.0)
    return {
        "left": (near, middle),
        "right": (far, middle),
        "top": (middle, near),
        "bottom": (middle, far),
    }[position]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif shape == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=255, width=max(1, round(r * 0.4)))
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((x - s, y - s, x + s, y + s), fill=255)
    elif shape == "bar":
        draw.rectangle((x - r, y - r * 0.4, x + r, y + r * 0.4), fill=255)
    elif shape == "cross":
        t = r * 0.35
        draw.rectangle((x - r, y - t, x + r, y + t), fill=255)
        draw.rectangle((x - t, y - r, x + t, y + r), fill=255)
    else:
        draw.polygon(_polygon(shape, x, y, r), fill=255)


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        corners, radii, turn = 3, (r * 1.1,), -math.pi / 2
    elif shape == "diamond":
        corners, radii, turn = 4, (r,), -math.pi / 2
    elif shape == "star":
        corners, radii, turn = 10, (r * 1.1, r * 0.45), -math.pi / 2
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [
        (
            x + radii[i % len(radii)] * math.cos(turn + 2 * math.pi * i / corners),
            y + radii[i % len(radii)] * math.sin(turn + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]
