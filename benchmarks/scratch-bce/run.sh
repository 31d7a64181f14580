#!/usr/bin/env bash
# dsmoe-n (BCE, the default since 2026-12-07) against yolov8s from scratch, as run for BENCHMARKS.md ("dsmoe-n with
# BCE from scratch"): the upgrade base's command (Ultralytics' default recipe, 256 px, 30 epochs, batch 8; NEU-DET
# with half its train set, the CPU budget), one folder per set and seed. Finished runs are reused; name models to
# train some only (calls side by side into one folder started a minute or more apart), then report all by a last call:
#   SET=neu-det SEED=2 bash benchmarks/scratch-bce/run.sh [models...]
# (The aluminum reports here were trained by benchmarks/balance-scratch/run.sh, the same command.)
set -euo pipefail
cd "$(dirname "$0")/../.."
SET=${SET:-neu-det}; SEED=${SEED:-42}
OUT=benchmarks/scratch-bce/$SET-seed$SEED
EXTRA=(); [ "$SET" = neu-det ] && EXTRA=(--fraction 0.5)  # 630 of 1260 train images
MODELS=(yolov8s.yaml dsmoe-n.yaml); [ $# -gt 0 ] && MODELS=("$@")
.venv/bin/dsmoe benchmark --data "../shared/datasets/$SET/data.yaml" --models "${MODELS[@]}" --imgsz 256 --epochs 30 \
  --batch 8 --seed "$SEED" --workers 2 "${EXTRA[@]}" --latency-imgsz 640 --reps 5 --out "$OUT"
