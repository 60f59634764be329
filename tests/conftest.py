"""Shared fixtures: tiny real models of every family (built once per session) and demos over tiny images."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from aim_icl import AIM, Demo
from aim_icl.testing.tiny import FAMILIES, build_tiny, tiny_image

NAMED_FAMILIES = (
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
    "smolvlm",
    "paligemma",
    "gemma3",
)
# the results-JSON row fields other tools read (issue contract): keep these names
RESULT_ROW_FIELDS = {
    "task",
    "mode",
    "shots",
    "metric",
    "value",
    "std",
    "trials",
    "prompt_tokens",
    "peak_memory_mb",
    "latency_ms",
}
WORDS = ["red", "blue", "green", "cat", "dog", "bird", "circle", "square", "small", "large", "left", "right"]


def make_demos(k: int, seed: int = 0) -> list[Demo]:
    """k demos with distinct images and texts of varying length."""
    g = torch.Generator().manual_seed(seed)
    demos = []
    for i in range(k):
        words = [WORDS[j] for j in torch.randint(len(WORDS), (1 + i % 3,), generator=g).tolist()]
        demos.append(Demo(tiny_image(seed * 100 + i), f"question: what is it? answer: {' '.join(words)}"))
    return demos


def save_tiny(directory: Path, family: str = "llava", **overrides) -> Path:
    """A tiny model of `family` and its processor saved as a Hugging Face directory (what `--model` takes)."""
    model, processor = build_tiny(family, **overrides)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory) -> Path:
    """The tiny LLaVA saved once per test session; treat it as read-only (save projectors elsewhere)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llava"))


@functools.cache
def tiny_aim(family: str) -> AIM:
    """An AIM over a tiny model of `family`, copy map fitted so fused tokens are not zero."""
    model, processor = build_tiny(family)
    aim = AIM(model, processor)
    aim.fit_projector(make_demos(8, seed=7))
    return aim


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def aim(family) -> AIM:
    return tiny_aim(family)


@pytest.fixture
def llava() -> AIM:
    return tiny_aim("llava")
