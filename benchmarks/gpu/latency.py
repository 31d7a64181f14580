"""GPU inference figures for trained checkpoints: fp16 batch-1 and batch-32 latency in PyTorch (fused, CUDA events),
ONNX Runtime's CUDA provider at batch 1 when the machine has it, and peak memory. Run by benchmarks/gpu/run.sh.

    python benchmarks/gpu/latency.py --weights runs/*/weights/best.pt --out OUT [--imgsz 640] [--device 0]

Writes OUT/latency.json and OUT/latency.md. With ``--device cpu`` (the script's dry run) it times fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def timed_ms(fn, reps: int, cuda: bool) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs after 10 warm-up runs (CUDA events on a GPU)."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def measure(weights: str, imgsz: int, device: str, reps: int) -> dict:
    from ultralytics import YOLO

    cuda = device != "cpu"
    dev = torch.device(f"cuda:{device}" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    model = YOLO(weights).model.fuse().eval().to(dev, dtype)
    row = {"dtype": str(dtype).replace("torch.", "")}
    for batch in (1, 32):
        x = torch.rand(batch, 3, imgsz, imgsz, device=dev, dtype=dtype)
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        with torch.no_grad():
            row[f"b{batch}_ms"] = timed_ms(lambda: model(x), reps if batch == 1 else max(reps // 4, 3), cuda)
        row[f"b{batch}_img_per_s"] = 1e3 * batch / row[f"b{batch}_ms"]
        if cuda:
            row[f"b{batch}_peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    onnx = Path(weights).with_suffix(".onnx")  # exported at imgsz, batch 1, fp32 by dsmoe benchmark
    try:
        import numpy as np
        import onnxruntime as ort

        if cuda and onnx.is_file() and "CUDAExecutionProvider" in ort.get_available_providers():
            session = ort.InferenceSession(str(onnx), providers=["CUDAExecutionProvider"])
            feed = {session.get_inputs()[0].name: np.random.rand(1, 3, imgsz, imgsz).astype(np.float32)}
            row["ort_cuda_fp32_b1_ms"] = timed_ms(lambda: session.run(None, feed), reps, False)
    except Exception as e:  # a figure missing is reported, not fatal
        row["ort_cuda_error"] = f"{type(e).__name__}: {e}"
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--device", default="0")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    name = torch.cuda.get_device_name(int(a.device)) if a.device != "cpu" else "CPU"
    rows = {Path(w).parent.parent.name: measure(w, a.imgsz, a.device, a.reps) for w in a.weights}
    report = {"device": name, "torch": torch.__version__, "imgsz": a.imgsz, "models": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "latency.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Inference on {name} (torch {torch.__version__}, {a.imgsz} px, fused, median after 10 warm-up runs)", "",
             "| model | dtype | batch 1 (ms) | batch 32 (ms) | batch 32 (img/s) | peak mem b32 (MB) | ORT CUDA fp32 b1 (ms) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['dtype']} | {r['b1_ms']:.2f} | {r['b32_ms']:.1f} | {r['b32_img_per_s']:.0f} | "
                     f"{r.get('b32_peak_mem_mb', float('nan')):.0f} | {r.get('ort_cuda_fp32_b1_ms', float('nan')):.2f} |")
    (a.out / "latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
