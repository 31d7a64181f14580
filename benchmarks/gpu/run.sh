#!/usr/bin/env bash
# GPU side of issue 17: one command, <= 8.5 min wall (install ~20 s, tests <= 100 s, benchmark <= 330 s, latency <= 60 s) on one H100/H200-class GPU, offline, on the bare GPU image (Python
# 3.12, torch, no ultralytics). Needs .gpu/ from benchmarks/gpu/prepare.sh next to the repo. Writes <= 8 files to OUT:
#   device.txt        nvidia-smi, torch and package versions
#   cuda-tests.txt    pytest -m cuda (AMP training steps, fp16/bf16 parity, offline AMP check, ORT CUDA parity)
#   results.md/.json  dsmoe benchmark: yolov8s, yolo26s, dsmoe-n from scratch with AMP at 640 px on aluminum
#   latency.md/.json  fp16 batch-1 and batch-32 latency (PyTorch, ONNX Runtime CUDA if present) and peak memory
#   benchmark-log.txt the benchmark's log (its last 400 lines)
# Usage: bash benchmarks/gpu/run.sh OUT [EPOCHS=20]
# Dry run on a CPU machine (checks the script, not the GPU): PY=.venv/bin/python DEVICE=cpu IMGSZ=64 bash ... OUT 1
set -uo pipefail
OUT=$(realpath "${1:?usage: run.sh OUT [EPOCHS]}"); EPOCHS=${2:-20}
DEVICE=${DEVICE:-0}; IMGSZ=${IMGSZ:-640}; BATCH=${BATCH:-16}
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
if [ -z "${PY:-}" ]; then  # the GPU image: a venv over its torch, our wheels into it, and a polars stand-in
  python3 -m venv --system-site-packages /tmp/venv && /tmp/venv/bin/pip install -q --no-index --no-deps .gpu/whl/*.whl \
    || { echo "install failed" | tee "$OUT/device.txt"; exit 1; }
  # polars (54 MB) does not fit the 64 MiB carry: Ultralytics only reads results.csv with it; pandas stands in.
  mkdir -p /tmp/shim/polars && cat > /tmp/shim/polars/__init__.py <<'PYEOF'
"""Stand-in for polars on the GPU machine: the read_csv(...).to_dict(as_series=False) that Ultralytics' trainer uses."""
import io

import pandas as pd


class DataFrame:
    def __init__(self, data=None):
        self.frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)

    def to_dict(self, as_series=True):
        return {k: list(v) for k, v in self.frame.to_dict(orient="list").items()}


def read_csv(source, infer_schema_length=None, **kwargs):
    return DataFrame(pd.read_csv(io.BytesIO(source) if isinstance(source, bytes) else source, skipinitialspace=True))
PYEOF
  export PYTHONPATH=/tmp/shim
  PY=/tmp/venv/bin/python
fi
BIN=$(dirname "$PY")
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 PYTHONUNBUFFERED=1 YOLO_CONFIG_DIR=$PWD/.gpu/config
export DSMOE_TEST_TEXT_CACHE=$PWD/.gpu/config/Ultralytics/dsmoe/text-embeddings
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; $PY -c "import torch, ultralytics, ultralytics_dsmoe, onnxruntime as o
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')
print('ultralytics', ultralytics.__version__, 'ultralytics-dsmoe', ultralytics_dsmoe.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
timeout 100 $PY -m pytest -q -m cuda tests/test_cuda.py -rs 2>&1 | tail -n 60 > "$OUT/cuda-tests.txt"
tail -n 5 "$OUT/cuda-tests.txt"
timeout 330 "$BIN/dsmoe" benchmark --data .gpu/data/aluminum/data.yaml --models yolov8s.yaml yolo26s.yaml dsmoe-n.yaml \
  --imgsz "$IMGSZ" --epochs "$EPOCHS" --batch "$BATCH" --device "$DEVICE" --workers 8 --latency-imgsz "$IMGSZ" --reps 20 \
  --out /tmp/gpu-bench > /tmp/gpu-bench.log 2>&1
echo "benchmark exit $?" >> /tmp/gpu-bench.log
tail -n 400 /tmp/gpu-bench.log > "$OUT/benchmark-log.txt"
cp /tmp/gpu-bench/results.md /tmp/gpu-bench/results.json "$OUT/" 2>/dev/null \
  || $PY -c "import json, glob; print(json.dumps({f: json.load(open(f)) for f in glob.glob('/tmp/gpu-bench/runs/*.result.json')}))" \
     > "$OUT/partial-results.json"  # the benchmark timed out: the runs it finished
timeout 60 $PY benchmarks/gpu/latency.py --weights /tmp/gpu-bench/runs/*/weights/best.pt --imgsz "$IMGSZ" \
  --device "$DEVICE" --out "$OUT" 2>&1 | tail -n 20 || echo "latency.py failed or timed out"
ls -la "$OUT"
