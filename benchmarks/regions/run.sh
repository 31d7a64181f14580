#!/usr/bin/env bash
# Issue 13's routing comparison on the CPU proxy, as run for BENCHMARKS.md ("Routing granularity", "Text meets the
# image", "Expert diversity"): per image, per region (4 x 4), and per region with each option (r4g: class affinity
# with the class texts grounded on the boxes), one recipe.
# yolov8s trains with the same recipe, so dsmoe-n's accuracy is judged against it (issue 11). The same command with
# OUT=benchmarks/recipe/aluminum-seed<SEED> trained the paper-recipe half of BENCHMARKS.md's "The paper's recipe
# against Ultralytics' default, in one environment" (yolov8s.yaml dsmoe-n.yaml).
# Finished runs are reused, so models can be added one at a time, or a subset named (OUT= another report folder;
# SEED= another seed than the recipe's 42, into its own OUT folder):
#   bash benchmarks/regions/run.sh [aluminum|neu-det] [models...]
set -euo pipefail
cd "$(dirname "$0")/../.."
SET=${1:-aluminum}; shift || true
MODELS=(yolov8s.yaml dsmoe-n.yaml benchmarks/regions/dsmoe-r4-n.yaml benchmarks/regions/dsmoe-r4a-n.yaml
        benchmarks/regions/dsmoe-r4e-n.yaml benchmarks/regions/dsmoe-r4f-n.yaml benchmarks/regions/dsmoe-r4g-n.yaml)
[ $# -gt 0 ] && MODELS=("$@")
EXTRA=(--gamma 1.5 --epochs 30); [ "$SET" = neu-det ] && EXTRA=(--epochs 15 --fraction 0.25)  # as first run
.venv/bin/dsmoe benchmark --data "../shared/datasets/$SET/data.yaml" --models "${MODELS[@]}" --cfg paper-recipe.yaml \
  --imgsz 256 "${EXTRA[@]}" --batch 8 --seed "${SEED:-42}" --workers 2 --latency-imgsz 640 --reps 5 --out "${OUT:-benchmarks/regions/$SET}"
