"""`--device auto` / `--dtype auto`: one resolution, checked with each backend's availability faked."""

from __future__ import annotations

import argparse

import pytest
import torch

from aim_icl.commands._model import model_placement, torch_device
from aim_icl.core.placement import check_device, resolve_device, resolve_dtype
from aim_icl.errors import AIMError


@pytest.fixture
def machine(monkeypatch):
    """Fake what torch can reach: `machine(cuda=2, bf16=True, mps=False, compiled=True)`."""
    for name in ("LOCAL_RANK", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)

    def fake(cuda: int = 0, bf16: bool = False, mps: bool = False, compiled: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.version, "cuda", "12.4" if compiled else None)

    return fake


@pytest.mark.parametrize(
    ("cuda", "mps", "env", "expected"),
    [
        (0, False, {}, "cpu"),
        (0, True, {}, "mps"),
        (1, True, {}, "cuda"),  # cuda before mps
        (4, False, {"LOCAL_RANK": "2"}, "cuda:2"),  # accelerate launch / torchrun: this process's GPU
        (2, False, {"LOCAL_RANK": "3"}, "cuda:1"),  # more processes than GPUs: they share them in turn
        (2, True, {"ACCELERATE_USE_CPU": "true", "LOCAL_RANK": "0"}, "cpu"),  # accelerate launch --cpu
        (0, False, {"LOCAL_RANK": "1"}, "cpu"),  # a CPU process group
    ],
)
def test_auto_picks_accelerates_device_then_cuda_then_mps_then_cpu(
    machine, monkeypatch, cuda, mps, env, expected
):
    machine(cuda=cuda, mps=mps)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_device("auto") == resolve_device(None) == expected


@pytest.mark.parametrize(
    ("device", "bf16", "expected"),
    [("cuda", True, "bfloat16"), ("cuda:1", True, "bfloat16"), ("cuda", False, "float32"), ("mps", True, "float32"),
     ("cpu", True, "float32")],
)  # fmt: skip
def test_auto_dtype_is_bfloat16_on_a_gpu_that_has_it_else_float32(machine, device, bf16, expected):
    machine(cuda=2, bf16=bf16, mps=True)
    assert resolve_dtype("auto", device) == resolve_dtype(None, device) == expected
    assert resolve_dtype("float16", device) == "float16"  # an explicit dtype is kept


def test_an_explicit_device_is_checked_against_what_this_torch_reaches(machine):
    machine(cuda=2, mps=False)
    assert (
        check_device("cuda") == "cuda" and check_device("cuda:1") == "cuda:1" and check_device("cpu") == "cpu"
    )
    with pytest.raises(AIMError, match="has 2 CUDA device"):
        check_device("cuda:2")
    with pytest.raises(AIMError, match="MPS is not available"):
        check_device("mps")
    with pytest.raises(AIMError, match="'gpu' is not a torch device"):
        check_device("gpu")


@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_without_cuda_is_one_line_naming_what_to_pass(machine, compiled):
    machine(cuda=0, compiled=compiled)
    with pytest.raises(AIMError) as error:
        resolve_device("cuda")
    message = str(error.value)
    assert "\n" not in message and "--device cpu or auto" in message
    assert ("CPU-only torch" in message) != compiled


def test_the_cli_checks_the_spelling_at_parse_and_the_machine_before_loading(machine):
    """--device is parsed as a torch device name; whether this machine has it is checked where the model loads
    (`model_placement`, `load_aim`): a Ray head without a GPU may start replicas on GPU nodes."""
    machine(cuda=0, compiled=False)
    assert torch_device("auto") == "auto" and torch_device("cuda:1") == "cuda:1"
    with pytest.raises(argparse.ArgumentTypeError, match="'gpu' is not a torch device"):
        torch_device("gpu")
    assert model_placement(argparse.Namespace(device="auto", dtype="auto")) == {
        "device": "cpu",
        "dtype": "float32",
    }
    with pytest.raises(AIMError, match="CPU-only torch"):
        model_placement(argparse.Namespace(device="cuda", dtype="auto"))
    machine(cuda=1, bf16=True)
    assert model_placement(argparse.Namespace(device="auto", dtype="auto")) == {
        "device": "cuda",
        "dtype": "bfloat16",
    }
    assert model_placement(argparse.Namespace(device="auto")) == {
        "device": "cuda",
        "dtype": None,
    }  # no --dtype
