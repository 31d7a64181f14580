#!/usr/bin/env bash
# Issue 12's controlled comparison on the CPU proxy, as run for BENCHMARKS.md ("Upgrading a trained YOLO"):
#   1. the base: yolov8s from scratch by the same `dsmoe benchmark` command as every other model (256 px, 30 epochs);
#   2. from that one checkpoint: the stock fine-tune, the DS-MoE upgrade, its stage columns, the text controls and
#      the upgrade with its class texts grounded on the boxes (real and shuffled prompts; routed per region, also with
#      a background anchor in the router's class affinity; with the pixel text in Stages 8-9), 10 epochs each,
#      seeds 0 1 2.
# Each call reuses finished runs, so it can be interrupted and continued (one dataset, or some variants, at a time):
#   bash benchmarks/upgrade/run.sh aluminum [variants...]      e.g.  bash benchmarks/upgrade/run.sh neu-det full
# SEEDS="0 1" trains some seeds only (two calls with different seeds can run side by side, started a minute or more
# apart: a call without the base trains it, and two exports of one checkpoint at once corrupt its best.onnx);
# report all by a last call. A finished base is reused as it is, its report left untouched.
# A variant may set its loss gains (a sweep): bash benchmarks/upgrade/run.sh aluminum full:qfl_gain=4 grounded_regions:2
# EPOCHS=20 fine-tunes for that many epochs instead of 10, into its own folder (benchmarks/upgrade/<set>-e20).
set -euo pipefail
cd "$(dirname "$0")/../.."
SET=${1:-aluminum}; shift || true
BASE=benchmarks/upgrade/$SET-base
ASK=(); [ $# -gt 0 ] && ASK=(--variants "$@")  # none named: every variant of `dsmoe benchmark --variants`
DATA=../shared/datasets/$SET/data.yaml
EPOCHS=${EPOCHS:-10}; OUT=benchmarks/upgrade/$SET; [ "$EPOCHS" = 10 ] || OUT=$OUT-e$EPOCHS
EXTRA=(); [ "$SET" = neu-det ] && EXTRA=(--fraction 0.5)  # 630 of 1260 train images: the CPU budget
[ -f "$BASE/runs/yolov8s.result.json" ] || .venv/bin/dsmoe benchmark --data "$DATA" --models yolov8s.yaml \
  --imgsz 256 --epochs 30 --batch 8 --workers 2 "${EXTRA[@]}" --latency-imgsz 640 --reps 5 --out "$BASE"
# shellcheck disable=SC2086
.venv/bin/dsmoe benchmark --data "$DATA" --finetune-from "$BASE/runs/yolov8s/weights/best.pt" \
  "${ASK[@]}" --seeds ${SEEDS:-0 1 2} --imgsz 256 --epochs "$EPOCHS" --batch 8 --workers 2 "${EXTRA[@]}" \
  --latency-imgsz 640 --reps 5 --out "$OUT"
