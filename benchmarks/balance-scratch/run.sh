#!/usr/bin/env bash
# Issue 13's balance weight from scratch, and dsmoe-n against yolov8s under Ultralytics' default recipe, as run for
# BENCHMARKS.md ("dsmoe-n against yolov8s on aluminum with Ultralytics' default recipe"): dsmoe-n at the default
# moe_balance 0.01 and at 0.1, beside yolov8s, by the upgrade base's command (256 px, 30 epochs, batch 8). Seed 42 goes
# into the upgrade's base folder, so its yolov8s base is reused; other seeds (SEED=1 ...) into their own folder.
# Finished runs are reused; name models to train some only (two calls side by side):
#   SEED=42 bash benchmarks/balance-scratch/run.sh [models...]
set -euo pipefail
cd "$(dirname "$0")/../.."
SEED=${SEED:-42}
OUT=benchmarks/upgrade/aluminum-base; [ "$SEED" = 42 ] || OUT=benchmarks/balance-scratch/aluminum-seed$SEED
MODELS=(yolov8s.yaml dsmoe-n.yaml benchmarks/balance-scratch/dsmoe-b01-n.yaml); [ $# -gt 0 ] && MODELS=("$@")
.venv/bin/dsmoe benchmark --data ../shared/datasets/aluminum/data.yaml --models "${MODELS[@]}" --imgsz 256 --epochs 30 \
  --batch 8 --seed "$SEED" --workers 2 --latency-imgsz 640 --reps 5 --out "$OUT"
