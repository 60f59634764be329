#!/usr/bin/env bash
# Install into .venv (if needed) and run the main job: `aim-icl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/aim-icl demo "$@"
