"""Cost benchmark: params, GFLOPs and latency of DS-MoE configs beside YOLOv8, and the top-k sweep of the MoE.

Run ``python -m ultralytics_dsmoe.costs`` (defaults: imgsz 640, batch 1, this machine's CPU). It prints the tables,
checks the cost targets of the architecture issue, and writes ``costs.json`` and ``costs.md`` to ``--out``.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass, for every model alike. It counts
matrix products and convolutions at the ATen level (2 FLOPs per multiply-add), including the ``einsum``/``bmm``
that run the sparse experts. Ultralytics' own summary line uses thop, which counts nn.Module types and misses
those, so it under-reports DS-MoE; it is not used here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from ultralytics_dsmoe.benchmark import REFERENCES, ratio_verdict, target_row, timing_verdict  # REFERENCES: judged against
from ultralytics_dsmoe.nn import BLOCKS, SparseMoE
from ultralytics_dsmoe.util import cpu_name, yaml_rows

TOPK = (1, 2, 4, 5, 8, 16, 32)
YOLO = ("yolov8n", "yolov8s", "yolov8m", "yolo11s", "yolo26s")
DSMOE = ("dsmoe-n", "dsmoe-s", "dsmoe-m", "dsmoe-full-n", "dsmoe-p2-n") + tuple(f"dsmoe-ablation-{c}-n" for c in "abcde") \
    + ("dsmoe-v8s", "dsmoe-11s")  # the upgrade configs, beside their sources yolov8s and yolo11s
ORT_MODELS = ("yolov8n", "yolov8s", "yolo11s", "yolo26s", "dsmoe-n", "dsmoe-full-n")  # ONNX Runtime latency rows


def cost_rows() -> dict[str, tuple[type, ...]]:
    """The cost breakdown's rows, from the stage table: label -> block types (found at any depth in a model)."""
    rows = {}
    for block in BLOCKS.values():
        if block.cost is not None:
            rows.setdefault(block.cost, []).append(block.cls)
    return {label: tuple(types) for label, types in rows.items()}


STAGES = cost_rows()


def set_experts(d: dict, ne: int | None = None, topk: int | None = None) -> dict:
    """Replace Ne and/or top-k in the SparseMoE rows (``[width, Ne, k, ...]``) of a model-yaml dict, in place."""
    for row in yaml_rows(d, "SparseMoE"):
        width, row_ne, row_k, *rest = row[3]  # rest: the balancing scheme, when given
        row[3] = [width, row_ne if ne is None else ne, row_k if topk is None else topk, *rest]
    return d


def build(cfg: str | dict, nc: int = 4, topk: int | None = None) -> DetectionModel:
    """A model from a config name or dict, with the SparseMoE top-k replaced when ``topk`` is given."""
    d = set_experts(yaml_model_load(cfg) if isinstance(cfg, str) else cfg, topk=topk)
    return DetectionModel(d, nc=nc, verbose=False).eval()


def count_flops(fn) -> tuple[float, dict]:
    """GFLOPs of ``fn()`` in total and per module path."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    per_module = {name: sum(ops.values()) / 1e9 for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops() / 1e9, per_module


def model_costs(model: DetectionModel, imgsz: int) -> dict:
    """Params (M), total GFLOPs, and GFLOPs per paper stage (the rest is the YOLO neck and head)."""
    total, per_module = count_flops(lambda: model(torch.zeros(1, 3, imgsz, imgsz)))
    stages = {
        label: sum(per_module.get(f"DetectionModel.{name}", 0.0) for name, m in model.named_modules() if isinstance(m, types))
        for label, types in STAGES.items()
    }
    stages["YOLO neck + head (stride-32 stage, PAN, Detect)"] = total - sum(stages.values())
    return {"params_M": sum(p.numel() for p in model.parameters()) / 1e6, "gflops": total, "stages": stages}


def latencies_ms(fns: dict, reps: int, warmup: int = 2) -> dict:
    """Median latency in ms of each zero-argument PyTorch callable, without autograd, over interleaved rounds."""
    with torch.no_grad():
        return {key: t["median"] for key, t in latency_rounds(fns, reps, warmup).items()}


def ort_session(file: str, threads: int, providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session whose worker threads sleep between runs instead of spinning.

    Spinning threads keep a core busy after each run, which slows whatever runs next: with spinning off, sessions
    of several models can be timed in interleaved rounds fairly."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(file, opts, providers=list(providers))


def latency_rounds(fns: dict, rounds: int, warmup: int = 2) -> dict:
    """Per callable: median, min and max latency (ms) over ``rounds`` interleaved rounds (one call each per round).

    Interleaving spreads background load over every model alike; the spread says how far to trust a ratio."""
    times = {key: [] for key in fns}
    for i in range(warmup + rounds):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[key].append((time.perf_counter() - t) * 1e3)
    return {key: {"median": statistics.median(v), "min": min(v), "max": max(v)} for key, v in times.items()}


def onnx_latencies(models: dict[str, str], imgsz: int, rounds: int, threads: int, folder: Path) -> dict:
    """Export each model config (label -> yaml, random weights) with Ultralytics' exporter into ``folder`` and time
    them in ONNX Runtime, interleaved. The exporter's ``select_device`` sets torch to cores - 1 threads; each export
    is followed by a reset to ``threads``, so eager work after this call runs as before it."""
    import numpy as np
    from ultralytics import YOLO

    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    fns = {}
    for label, cfg in models.items():
        file = Path(YOLO(cfg).export(format="onnx", imgsz=imgsz, simplify=False, device="cpu"))
        torch.set_num_threads(threads)
        session = ort_session(str(file.replace(folder / f"{Path(cfg).stem}.onnx")), threads)
        fns[label] = lambda s=session, f={session.get_inputs()[0].name: x}: s.run(None, f)
    return latency_rounds(fns, rounds)


def moe_inputs(model: DetectionModel, imgsz: int) -> tuple[SparseMoE, list]:
    """The model's SparseMoE block and the inputs it receives in a forward pass at ``imgsz``."""
    moe = next(m for m in model.model if isinstance(m, SparseMoE))
    seen = {}
    handle = moe.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    with torch.no_grad():
        model(torch.zeros(1, 3, imgsz, imgsz))
    handle.remove()
    return moe, seen["x"]


def run(imgsz: int = 640, reps: int = 5, out: Path | None = None, ort_rounds: int = 20) -> dict:
    torch.manual_seed(0)
    results = {"settings": {"imgsz": imgsz, "batch": 1, "reps": reps, "ort_rounds": ort_rounds, "device": f"CPU ({cpu_name()}), "
                            f"{torch.get_num_threads()} threads", "torch": torch.__version__}}
    results["models"] = {name: model_costs(build(f"{name}.yaml"), imgsz) for name in YOLO + DSMOE}
    x = torch.rand(1, 3, imgsz, imgsz)
    models = {k: build("dsmoe-n.yaml", topk=k) for k in TOPK}
    blocks = {k: moe_inputs(m, imgsz) for k, m in models.items()}
    model_ms = latencies_ms({k: (lambda m=m: m(x)) for k, m in models.items()}, reps)
    block_ms = latencies_ms({k: (lambda b=b: b[0](b[1])) for k, b in blocks.items()}, reps * 4)
    sweep = {
        k: {"moe_gflops": count_flops(lambda b=blocks[k]: b[0](b[1]))[0], "model_gflops": count_flops(lambda m=m: m(x))[0],
            "moe_latency_ms": block_ms[k], "latency_ms": model_ms[k]}
        for k, m in models.items()
    }
    results["topk"] = sweep
    with tempfile.TemporaryDirectory() as tmp:
        results["ort"] = onnx_latencies({n: f"{n}.yaml" for n in ORT_MODELS}, imgsz, ort_rounds, torch.get_num_threads(),
                                        Path(tmp))
    m, o = results["models"], results["ort"]
    exact = {"moe_flops_k5_over_k32": (sweep[5]["moe_gflops"] / sweep[32]["moe_gflops"], 0.25),
             "latency_k5_over_k1": (sweep[5]["latency_ms"] / sweep[1]["latency_ms"], 1.15),
             **{f"dsmoe_n_gflops_over_{y}": (m["dsmoe-n"]["gflops"] / m[y]["gflops"], 1.0) for y in REFERENCES}}
    results["targets"] = {k: ratio_verdict(v, v, v, lim) for k, (v, lim) in exact.items()}
    for y in REFERENCES:  # latency: judged on the spread over rounds, as dsmoe benchmark does
        results["targets"][f"dsmoe_n_ort_latency_over_{y}"] = timing_verdict(o["dsmoe-n"], o[y], 1.0)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "costs.json").write_text(json.dumps(results, indent=2))
        (out / "costs.md").write_text(markdown(results))
    return results


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"# Cost figures (imgsz {s['imgsz']}, batch {s['batch']}, {s['device']}, torch {s['torch']})", "",
             "Generated by `python -m ultralytics_dsmoe.costs`. GFLOPs: `torch.utils.flop_counter.FlopCounterMode`, "
             "one forward pass, nc = 4, the same counter for every model.", "",
             "## Params and GFLOPs", "", "| model | params (M) | GFLOPs |", "|---|---:|---:|"]
    lines += [f"| {name} | {v['params_M']:.2f} | {v['gflops']:.1f} |" for name, v in r["models"].items()]
    lines += ["", "## Where dsmoe-n's GFLOPs go", "", "| part | GFLOPs | share |", "|---|---:|---:|"]
    n = r["models"]["dsmoe-n"]
    lines += [f"| {k} | {v:.2f} | {100 * v / n['gflops']:.0f}% |" for k, v in n["stages"].items()]
    lines += ["", "## Top-k sweep, dsmoe-n, Ne = 32", "",
              f"Latency: eager PyTorch, batch 1; median of {s['reps']} model forwards ({4 * s['reps']} for the block "
              "alone) after 2 warm-up runs, the k settings interleaved.", "",
              "| k | MoE GFLOPs | MoE vs k=32 | MoE latency (ms) | model GFLOPs | model latency (ms) | vs k=1 |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    t = r["topk"]
    k32, k1 = t[32]["moe_gflops"], t[1]["latency_ms"]
    for k, v in t.items():
        lines.append(f"| {k} | {v['moe_gflops']:.3f} | {v['moe_gflops'] / k32:.2f}x | {v['moe_latency_ms']:.1f} | "
                     f"{v['model_gflops']:.2f} | {v['latency_ms']:.0f} | {v['latency_ms'] / k1:.2f}x |")
    lines += ["", f"## ONNX Runtime latency (batch 1, {s['imgsz']} px, Ultralytics' exporter, random weights)", "",
              f"Median, min and max over {s['ort_rounds']} rounds, the models interleaved in each, after 2 warm-up "
              "rounds; ONNX Runtime thread spinning off. GFLOP/s = GFLOPs / median.", "",
              "| model | GFLOPs | median (ms) | min | max | GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {r['models'][k]['gflops']:.1f} | {v['median']:.0f} | {v['min']:.0f} | {v['max']:.0f} | "
              f"{r['models'][k]['gflops'] / v['median'] * 1e3:.0f} |" for k, v in r["ort"].items()]
    lines += ["", "## Targets", "", "Latency targets are met only when the spread over rounds is within the limit, "
              "missed when it is all beyond it, and unclear otherwise.", "",
              "| target | measured | spread | limit | met |", "|---|---:|---:|---:|---|"]
    lines += [target_row(k, t, digits=3) for k, t in r["targets"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--out", type=Path, default=Path("benchmarks"))
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(markdown(run(a.imgsz, a.reps, a.out)))


if __name__ == "__main__":
    main()
