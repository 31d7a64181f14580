"""The hybrid encoder's sweep: TinyViT input ratio x conv-stem width, against yolov8s and yolo26s (issue 11).

Run ``python benchmarks/encoder_sweep.py`` alone on the machine (it times things). For each point of the grid it builds
dsmoe-n with ``HybridEncoder [auto, ratio, stem]`` (stem before the width multiple: 64 is 16 channels at scale n) and
measures, side by side with the references in one process:

- GFLOPs at 640 px (``ultralytics_dsmoe.costs``' FlopCounterMode counter, the same for every model);
- ONNX Runtime latency at 640 px, batch 1 (Ultralytics' exporter, thread spinning off, the models interleaved in
  each round; median and min-max over rounds);
- the eager training step: forward + backward of the model's own training loss (DS-MoE: QFocal + CIoU + DFL + the
  auxiliary terms; YOLO: Ultralytics' loss) on random images with random boxes, at the CPU proxy's 256 px, batch 8,
  interleaved rounds.

It writes each point's model yaml to ``benchmarks/encoder-sweep/models/`` (so ``dsmoe benchmark --models`` can train
them for the accuracy column) and ``results.json`` / ``results.md`` beside it. Accuracy is not measured here.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import yaml_model_load

from ultralytics_dsmoe.costs import build, latency_rounds, model_costs, ort_session

HERE = Path(__file__).resolve().parent / "encoder-sweep"
RATIOS = (0.5, 0.625, 0.75, 1.0)
STEMS = (0, 64, 128)  # before the width multiple: 0, 16, 32 channels at scale n
REFERENCES = ("yolov8s", "yolo26s")


def point_yaml(ratio: float, stem: int) -> Path:
    """dsmoe-n with HybridEncoder [auto, ratio, stem], written where Ultralytics reads the scale from the name."""
    d = copy.deepcopy(yaml_model_load("dsmoe-n.yaml"))
    row = next(r for r in d["backbone"] if r[2] == "HybridEncoder")
    row[3] = [row[3][0], ratio, stem, *row[3][3:]]
    d = {k: v for k, v in d.items() if k not in ("scale", "yaml_file", "ch")}
    file = HERE / "models" / f"dsmoe-r{round(ratio * 1000):04d}-s{stem}-n.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(f"# dsmoe-n with HybridEncoder [auto, {ratio}, {stem}] (benchmarks/encoder_sweep.py)\n"
                    + yaml.safe_dump(d, sort_keys=False, default_flow_style=None))
    return file


def train_step(cfg: str, imgsz: int, batch: int):
    """A zero-argument callable: one forward + backward of the model's training loss on a fixed random batch."""
    model = build(cfg).train()
    model.args = get_cfg()
    g = torch.Generator().manual_seed(0)
    n = 3 * batch  # three boxes per image
    xy, wh = torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05
    data = {"img": torch.rand(batch, 3, imgsz, imgsz, generator=g), "cls": torch.randint(0, 4, (n, 1), generator=g).float(),
            "bboxes": torch.cat([xy, wh], 1), "batch_idx": torch.arange(batch).repeat_interleave(3).float()}

    def step():
        model.zero_grad(set_to_none=True)
        loss, _ = model.loss(data)
        loss.sum().backward()
    return step


def run(rounds: int, step_rounds: int, imgsz: int, step_imgsz: int, batch: int) -> dict:
    torch.manual_seed(0)
    models = {name: f"{name}.yaml" for name in REFERENCES}
    points = {f"ratio {r}, stem {s}": (r, s) for r in RATIOS for s in STEMS}
    models.update({label: str(point_yaml(r, s)) for label, (r, s) in points.items()})
    results = {label: model_costs(build(cfg), imgsz) for label, cfg in models.items()}
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for label, cfg in models.items():
            file = Path(YOLO(cfg).export(format="onnx", imgsz=imgsz, simplify=False, device="cpu"))
            torch.set_num_threads(threads)  # the exporter's select_device set it to cores - 1
            sessions[label] = ort_session(str(file.replace(Path(tmp) / f"{file.stem}.onnx")), threads)
        ort = latency_rounds({k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()}, rounds)
    steps = latency_rounds({k: train_step(cfg, step_imgsz, batch) for k, cfg in models.items()}, step_rounds, warmup=1)
    for label in models:
        results[label].pop("stages")
        results[label].update(ort=ort[label], step=steps[label], yaml=str(Path(models[label]).name),
                              **({"ratio": points[label][0], "stem": points[label][1]} if label in points else {}))
    settings = {"imgsz": imgsz, "ort_rounds": rounds, "step": f"{step_imgsz} px, batch {batch}, {step_rounds} rounds",
                "device": f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads",
                "torch": torch.__version__}
    return {"settings": settings, "models": results}


def markdown(r: dict) -> str:
    s, m = r["settings"], r["models"]
    lines = [f"# Hybrid encoder sweep: dsmoe-n, TinyViT ratio x stem width ({s['device']}, torch {s['torch']})", "",
             "Generated by `python benchmarks/encoder_sweep.py`. GFLOPs and ONNX Runtime latency at "
             f"{s['imgsz']} px, batch 1 (median [min-max] over {s['ort_rounds']} interleaved rounds, spinning off); "
             f"training step: forward + backward of the model's own loss, {s['step']}, median [min-max]. Ratios "
             "against yolov8s and yolo26s measured in the same run. Stem: width before the scale's multiple (64 = 16 "
             "channels at n).", "",
             "| model | params (M) | GFLOPs | x yolov8s | x yolo26s | ORT (ms) | x yolov8s | x yolo26s | step (s) | x yolov8s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    v8, y26 = m["yolov8s"], m["yolo26s"]
    for k, v in m.items():
        lines.append(f"| {k} | {v['params_M']:.2f} | {v['gflops']:.1f} | {v['gflops'] / v8['gflops']:.2f} | "
                     f"{v['gflops'] / y26['gflops']:.2f} | {v['ort']['median']:.0f} [{v['ort']['min']:.0f}-"
                     f"{v['ort']['max']:.0f}] | {v['ort']['median'] / v8['ort']['median']:.2f} | "
                     f"{v['ort']['median'] / y26['ort']['median']:.2f} | {v['step']['median'] / 1e3:.2f} "
                     f"[{v['step']['min'] / 1e3:.2f}-{v['step']['max'] / 1e3:.2f}] | "
                     f"{v['step']['median'] / v8['step']['median']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10, help="ONNX Runtime rounds")
    p.add_argument("--step-rounds", type=int, default=5)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--step-imgsz", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=HERE)
    a = p.parse_args(argv)
    r = run(a.rounds, a.step_rounds, a.imgsz, a.step_imgsz, a.batch)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(r, indent=2))
    (a.out / "results.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
