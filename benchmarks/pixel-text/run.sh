#!/usr/bin/env bash
# Issue 13's "text that meets the image", as run for BENCHMARKS.md ("Pixel text"): dsmoe-n against dsmoe-pt-n (the
# cross-modal experts and ExpertEnsemble read each pixel's class text from Stage 5's assignment instead of a constant),
# from scratch on aluminum by the upgrade base's command (Ultralytics' default recipe, 256 px, 30 epochs, batch 8), both
# in one environment. Finished runs are reused; name models to train some only (two calls side by side):
#   SEED=42 bash benchmarks/pixel-text/run.sh [models...]
set -euo pipefail
cd "$(dirname "$0")/../.."
SEED=${SEED:-42}
MODELS=(dsmoe-n.yaml benchmarks/pixel-text/dsmoe-pt-n.yaml); [ $# -gt 0 ] && MODELS=("$@")
.venv/bin/dsmoe benchmark --data ../shared/datasets/aluminum/data.yaml --models "${MODELS[@]}" --imgsz 256 --epochs 30 \
  --batch 8 --seed "$SEED" --workers 2 --latency-imgsz 640 --reps 5 --out "benchmarks/pixel-text/aluminum-seed$SEED"
