#!/usr/bin/env bash
# Rebuild the embedded world's shipped checkpoint from scratch (about an hour on 2 busy CPU cores, last run 75 min):
# pretrain the tiny LLaVA on corpora 1-3, export corpus 4, train the AIM projector with `aim-icl train`, ship both.
# Usage: scripts/build_world.sh [WORK_DIR]   (then `aim-icl demo` evaluates what was shipped)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-build/world}"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
aim-icl world pretrain --output "$work/model" --seed 0 --overwrite
rm -rf "$work/data" "$work/projector"
aim-icl world data --corpus interleaved --seed 0 --n 6000 --output "$work/data"
aim-icl train --config src/aim_icl/world/projector.yaml --model "$work/model" --output "$work/projector" \
    --data "$work/data/interleaved.jsonl" --image-root "$work/data"
aim-icl world ship --model "$work/model" --projector "$work/projector"
