#!/usr/bin/env bash
# Create .venv (if missing) and install aim-icl with the extras named in $AIM_ICL_EXTRAS (default: test,train,eval,serve,cluster).
# torch is pinned to the CPU build that lies on this kind of machine; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${AIM_ICL_EXTRAS:-test,train,eval,serve,cluster}"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${AIM_ICL_TORCH:-2.13.0}"
python -m pip install -q -e ".[${extras}]"
