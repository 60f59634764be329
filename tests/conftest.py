"""Shared fixtures: tiny real models of every family (built once per session) and demos over tiny images."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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
    "failed",
    *("prepare_s", "wait_s", "read_s", "build_s", "generate_s", "score_s"),  # where the time went
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


@dataclass(frozen=True)
class SavedModel:
    model: Path  # a Hugging Face directory: what `--model` and `AIM.from_pretrained` take
    projector: Path  # its projector, copy map fitted: what `--projector` takes
    aim: AIM  # the same model and projector in memory


def save_tiny(directory: Path, family: str = "llava", **overrides) -> tuple[Path, AIM]:
    """A tiny model of `family` and its processor saved as a Hugging Face directory, and an AIM over it (with a
    residual projector, whose copy map the fixtures fit)."""
    model, processor = build_tiny(family, **overrides)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory, AIM(model, processor, projector_name="residual")


@pytest.fixture(scope="session")
def saved_llava(tmp_path_factory) -> SavedModel:
    """The tiny LLaVA and a fitted projector saved once per test session: read them, write elsewhere."""
    root = tmp_path_factory.mktemp("tiny-llava")
    model, aim = save_tiny(root / "model")
    aim.fit_projector(make_demos(32, seed=7))
    return SavedModel(model, aim.save_projector(root / "projector"), aim)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(*arguments: str):
    """A real `aim-icl serve` with these arguments on a free loopback port (one torch thread); yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "aim_icl.cli", "serve", "--port", str(port), *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 120.0) -> None:
    """Wait until the server at `url` answers /health; fail with its stderr if it exits first."""
    import httpx

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not healthy after {seconds:.0f} s")


@functools.cache
def tiny_aim(family: str) -> AIM:
    """An AIM over a tiny model of `family` with a residual projector, copy map fitted: fused tokens that are
    neither zero nor exactly the text's embeddings."""
    model, processor = build_tiny(family)
    aim = AIM(model, processor, projector_name="residual")
    aim.fit_projector(make_demos(32, seed=7))  # 341 positions: the 64-wide copy map generalises
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
