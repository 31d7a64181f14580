"""One model, two versions of the plugin: same outputs? ONNX Runtime latency and training-step time, side by side.

    python benchmarks/speed/ab.py --before REV [--cfg dsmoe-n.yaml] --out benchmarks/speed/NAME    (run alone)

For changes meant to make blocks faster without changing what they compute. The plugin at git revision REV is checked
out into a temporary worktree; each version runs in its own processes (PYTHONPATH picks the version), builds the model
from the same seed and exports it with Ultralytics' exporter (640 px, batch 1, random weights). Then:
- outputs: both ONNX files on one random image, max |before - after| against the largest output;
- ONNX Runtime: the two files and the reference (yolov8s) interleaved in each round, 2 threads, spinning off;
- training step: ``encoder_sweep.train_step`` (forward + backward of the model's loss on a fixed random batch; 1 torch
  thread, as the Ultralytics trainer sets on 2 cores); one process per version and round, alternating, each reporting
  its median step.
Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ultralytics_dsmoe.util import cpu_name

REPO = Path(__file__).resolve().parents[2]
EXPORT = """
import sys, torch
from pathlib import Path
from ultralytics import YOLO
torch.manual_seed(0)
Path(YOLO(sys.argv[1]).export(format="onnx", imgsz=640, simplify=False, device="cpu")).replace(sys.argv[2])
"""
STEP = """
import json, sys, torch
sys.path.insert(0, sys.argv[5])  # the current tree's benchmarks/: encoder_sweep's training step, for either version
from encoder_sweep import train_step
from ultralytics_dsmoe.costs import latency_rounds
torch.set_num_threads(1)
torch.manual_seed(0)
step = train_step(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
print(json.dumps(latency_rounds({"step": step}, int(sys.argv[4]), warmup=1)["step"]["median"]))
"""


def python(code: str, tree: Path, cwd: Path, *args) -> str:
    """Run ``code`` in ``cwd`` with the plugin from ``tree``; its stdout (raises with stderr on failure)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "YOLO_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{code.splitlines()[1]}... failed in {tree}:\n{r.stderr[-3000:]}")
    return r.stdout


def compare(before: str, cfg: str, reference: str, rounds: int, step_rounds: int, imgsz: int, batch: int,
            reps: int) -> dict:
    import numpy as np

    from ultralytics_dsmoe.costs import latency_rounds, ort_session

    ref = Path(reference).stem
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old), before], check=True)
        try:
            trees = {"before": old, "after": REPO}
            files = {k: tmp / f"{k}.onnx" for k in trees}
            for k, tree in trees.items():
                python(EXPORT, tree, tmp, cfg, files[k])
            python(EXPORT, REPO, tmp, reference, tmp / "reference.onnx")
            x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
            sessions = {k: ort_session(str(f), 2) for k, f in {**files, ref: tmp / "reference.onnx"}.items()}
            feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
            y = {k: sessions[k].run(None, feeds[k])[0] for k in trees}
            outputs = {"max_abs_diff": float(np.abs(y["before"] - y["after"]).max()),
                       "max_abs_output": float(np.abs(y["before"]).max())}
            ort = latency_rounds({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}, rounds)
            steps = {k: [] for k in trees}
            for _ in range(step_rounds):
                for k, tree in trees.items():
                    out = python(STEP, tree, tmp, cfg, imgsz, batch, reps, REPO / "benchmarks")
                    steps[k].append(json.loads(out.splitlines()[-1]))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    settings = {"cfg": cfg, "before": before, "after": rev.stdout.strip() + " (working tree)",
                "reference": ref, "device": f"CPU ({cpu_name()}, {os.cpu_count()} cores)",
                "ort": f"640 px, batch 1, 2 threads, {rounds} rounds",
                "step": f"{imgsz} px, batch {batch}, 1 thread, median of {reps} steps per process, {step_rounds} "
                        "processes per version"}
    step = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in steps.items()}
    return {"settings": settings, "outputs": outputs, "ort": ort, "step": step}


def markdown(r: dict) -> str:
    s, o, ort, step = r["settings"], r["outputs"], r["ort"], r["step"]
    ref = s["reference"]

    def row(label, t, base):
        return f"| {label} | {t['median']:.1f} [{t['min']:.1f}-{t['max']:.1f}] | {t['median'] / base:.3f} |"

    lines = [f"# {s['cfg']}: plugin {s['before']} against {s['after']} ({s['device']})", "",
             "Generated by `python benchmarks/speed/ab.py`. Median [min-max].", "",
             f"Outputs on one random 640 px image (ONNX Runtime): max |before - after| = {o['max_abs_diff']:.2e}, "
             f"largest output {o['max_abs_output']:.1f}.", "",
             f"ONNX Runtime ({s['ort']}, interleaved with {ref}):", "",
             f"| version | ms | x {ref} |", "|---|---:|---:|",
             row("before", ort["before"], ort[ref]["median"]), row("after", ort["after"], ort[ref]["median"]),
             row(ref, ort[ref], ort[ref]["median"]), "",
             f"Training step ({s['step']}):", "", "| version | ms | x before |", "|---|---:|---:|",
             row("before", step["before"], step["before"]["median"]),
             row("after", step["after"], step["before"]["median"])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="git revision of the plugin to compare with the working tree")
    p.add_argument("--cfg", default="dsmoe-n.yaml")
    p.add_argument("--reference", default="yolov8s.yaml", help="timed in the same ONNX Runtime rounds")
    p.add_argument("--rounds", type=int, default=30, help="ONNX Runtime rounds")
    p.add_argument("--step-rounds", type=int, default=4, help="training-step processes per version")
    p.add_argument("--step-imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=3, help="timed training steps per process")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    r = compare(a.before, a.cfg, a.reference, a.rounds, a.step_rounds, a.step_imgsz, a.batch, a.reps)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(r, indent=2))
    (a.out / "results.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
