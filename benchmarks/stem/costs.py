"""Costs of the cheaper stems (issue 11) beside the default and the references, in one quiet process.

    python benchmarks/stem/costs.py [--ort]     (run alone: it times things)

GFLOPs and params at 640 px (``ultralytics_dsmoe.costs``' counter); with ``--ort``, ONNX Runtime latency at 640 px,
batch 1, 2 threads, spinning off, the models interleaved in 15 rounds (median, min, max). Writes ``costs.json`` here.
The accuracy of the same models is in ``benchmarks/encoder-sweep/aluminum`` (``benchmarks/regions/run.sh``).
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

from ultralytics_dsmoe.costs import build, model_costs, onnx_latencies

HERE = Path(__file__).resolve().parent
MODELS = {"yolov8s": "yolov8s.yaml", "yolo26s": "yolo26s.yaml",  # stem128: HybridEncoder [auto, 0.5, 128]
          "stem128": str(HERE.parent / "encoder-sweep" / "models" / "dsmoe-r0500-s128-n.yaml"),
          **{f"stem{v}": str(HERE / f"dsmoe-stem{v}-n.yaml") for v in ("p3", "thin", "thinp3")},
          "r0625p3": str(HERE / "dsmoe-r0625-stemp3-n.yaml")}  # TinyViT at ratio 0.625 with the P3-only stem


def main(ort: bool) -> dict:
    torch.set_num_threads(2)
    out = {}
    for k, cfg in MODELS.items():
        c = model_costs(build(cfg), 640)
        out[k] = {"gflops": c["gflops"], "params": c["params_M"]}
    if ort:
        with tempfile.TemporaryDirectory() as tmp:
            for k, t in onnx_latencies(MODELS, 640, 15, 2, Path(tmp)).items():
                out[k]["ort"] = t
    (HERE / "costs.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    for name, r in main("--ort" in sys.argv).items():
        print(name, f"{r['gflops']:.1f} GFLOPs", {k: round(v) for k, v in r.get("ort", {}).items()})
