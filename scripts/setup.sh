#!/usr/bin/env bash
# Create .venv (if missing) and install aim-icl with the extras named in $AIM_ICL_EXTRAS (default: test,train,eval,serve,cluster,lmms-eval).
# torch is pinned to the CPU build that lies on this kind of machine; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${AIM_ICL_EXTRAS:-test,train,eval,serve,cluster,lmms-eval}"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${AIM_ICL_TORCH:-2.13.0}"
# the torch that is there stays: lmms-eval requires torchvision, whose newest wheel would pull a newer torch
torch_version=$(python -c "import torch; print(torch.__version__.split('+')[0])")
python -m pip install -q -e ".[${extras}]" "torch==${torch_version}"
# a torchvision wheel built for another torch build (PyPI's CUDA one beside a CPU torch) fails to load
# (operator torchvision::nms does not exist) and breaks transformers' image processors; lmms-eval runs without it
python -c "import torchvision" 2>/dev/null || python -m pip uninstall -q -y torchvision
