"""``dsmoe benchmark``: is DS-MoE better than YOLOv8 on my data? One command, one recipe for every model.

Every model is trained by the standard Ultralytics trainer on the same data with the same settings (imgsz, epochs,
batch, seed, recipe, pretrained or not), each in its own process, then its best.pt is evaluated on the test split
(val when there is none). Measured in the same run, for every model alike:

- accuracy: mAP50, mAP50-95, precision, recall (Ultralytics' mean P and R) and F1 = 2PR / (P + R);
- cost: params and GFLOPs (``costs.count_flops``: one counter for all models), batch 1 at ``--latency-imgsz``;
- training: seconds per epoch (training loop only), the median training-step time (forward, backward and, every
  ``nbs / batch`` steps, the optimizer; callbacks around each batch) and peak memory (CUDA: peak allocated; CPU:
  peak resident memory of the training process);
- inference: batch-1 latency at ``--latency-imgsz`` in PyTorch eager (fused) and in ONNX Runtime on the same device,
  each timed in interleaved rounds (one run of every model per round) so background load hits all models alike;
  ONNX Runtime's thread spinning is off, since a spinning session slows the next model's run. ONNX Runtime times
  are reported as the median with the min-max spread over rounds.

Verdicts compare dsmoe-n with yolov8s and with yolo26s. A latency verdict is given only when the spread clears the
limit: met when even dsmoe-n's slowest round against the reference's fastest is within it, missed when even its
fastest against the reference's slowest is not, and unclear otherwise.

``--finetune-from base.pt`` asks what the DS-MoE stages add to a YOLO model you already trained: from that one
checkpoint it fine-tunes, with the identical recipe and seeds, the stock model and its DS-MoE upgrade
(``ultralytics_dsmoe.upgrade``), the upgrade's stage ablation (the paper's columns: + text guidance, + Poincare
alignment, + sparse experts, + QFocal = the full upgrade), two text controls on the full upgrade (the class
prompts shuffled between classes, and random vectors of the same norm), and the full upgrade with its class anchors
grounded on the boxes, with real and shuffled prompts, routed per region, and with the pixel text (``ON_FULL``).
``--seeds 0 1 2`` repeats every run; the report gives mean and standard deviation, and each variant's paired gain
over the stock model seed by seed.

DS-MoE models also get a routing report (``ultralytics_dsmoe.routing``). ``--topk 1 2 4 5 8 16 32`` trains the
DS-MoE config once per top-k instead (the paper's Table 5). Writes ``results.json``, ``results.md`` and
``results.png`` to ``--out``; each run folder is under ``--out/runs``. Rows of the folder's previous report that a
call does not run are kept in a table of their own, with the call that measured them (``earlier_runs``). The
dataset is read through a folder of symlinks in ``--out/data`` (with ``gamma:`` added when asked), so label caches
are written there, never into the user's dataset. A finished run is reused when the same spec is asked again (the
same settings, and the same contents of the model file and source checkpoint it trained from), so one ``--out``
folder holds one dataset (and gamma): another is refused there. Settings the command line leaves out come from the
``--cfg`` recipe, else ``RUN_DEFAULTS``.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from ultralytics_dsmoe.meta import __version__
from ultralytics_dsmoe.upgrade import STAGES, ablate
from ultralytics_dsmoe.util import cpu_name, yaml_rows

DEFAULT_MODELS = ("yolov8n.yaml", "yolov8s.yaml", "yolo11s.yaml", "yolo26s.yaml", "dsmoe-n.yaml")
TOPK = (1, 2, 4, 5, 8, 16, 32)
REFERENCES = ("yolov8s", "yolo26s")  # dsmoe-n is judged against each one in the run
TARGETS = {  # label -> (measured key, kind, limit); the targets, judged on one run
    "mAP50-95 gain (pp)": ("map50_95", "gain_pp", 0.0),
    "ONNX Runtime latency": ("ort_ms", "ratio", 1.0),
    "training-step time": ("step_ms", "ratio", 1.5),
    "peak training memory": ("peak_mem_mb", "ratio", 1.5),
}


def stage_dataset(data: str, out: Path, gamma: float | None) -> Path:
    """A data yaml under ``out`` whose image and label folders are symlinks to the user's files (label caches then
    land in ``out``), with ``gamma`` added when given. Downloads/converts the dataset first if its yaml says how."""
    from ultralytics.data.utils import check_det_dataset, img2label_paths
    from ultralytics.utils import YAML

    from ultralytics_dsmoe.data.convert import IMAGE_SUFFIXES

    d = check_det_dataset(data)
    source = str(Path(d.get("yaml_file", data)).resolve())
    view = {"path": str(out), "names": d["names"], "channels": d.get("channels", 3), "source": source}
    for key in ("prompts", "gamma"):
        if d.get(key) is not None:
            view[key] = d[key]
    if isinstance(view.get("prompts"), str):  # a prompts file is relative to the original yaml
        view["prompts"] = str((Path(d.get("yaml_file", ".")).parent / view["prompts"]).resolve())
    if gamma is not None:
        view["gamma"] = gamma
    yaml_file = out / "data.yaml"
    if yaml_file.exists():  # finished runs are reused by their spec, which names this view: one dataset per folder
        staged = YAML.load(yaml_file)
        differs = [k for k in ("source", "names", "gamma") if staged.get(k) != view.get(k)
                   and not (k == "source" and "source" not in staged)]  # views staged by earlier versions lack it
        if differs:
            raise ValueError(f"{out.parent} holds a benchmark of {staged.get('source', 'another dataset')} "
                             f"({', '.join(f'{k} {staged.get(k)}' for k in differs)}); its finished runs would be "
                             f"reused for {source} ({', '.join(f'{k} {view.get(k)}' for k in differs)}). "
                             "Use another --out, or delete that folder to start again.")
    for split in ("train", "val", "test"):
        src = d.get(split)
        if not src:
            continue
        if not (isinstance(src, str) and Path(src).is_dir()):
            view[split] = src  # image lists and .txt files are used as they are
            continue
        for im in sorted(p for p in Path(src).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            rel = im.relative_to(src)
            label = Path(img2label_paths([str(im)])[0])
            for source, link in ((im, out / "images" / split / rel), (label, out / "labels" / split / rel.with_suffix(".txt"))):
                if source.exists() and not link.is_symlink():
                    if link.exists():  # not ours to replace: a view copied without its links (or a user's file)
                        raise FileExistsError(f"{link} is a file, not a link to {source}: the dataset view in {out} "
                                              "was copied without its symlinks. Delete that folder; the next run "
                                              "stages it again.")
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(source.resolve())
        view[split] = f"images/{split}"
    YAML.save(yaml_file, view)
    return yaml_file


GROUND_GAIN = 0.5  # the grounded variants' ground_gain: its cross-entropy (log nc at the start) beside box and DFL
# (--variants grounded_regions:2 trains one at another gain, named with -g2)
ON_FULL = {  # the full upgrade with model-YAML keys, SparseMoE's routing args (after c2, Ne, k) and the pixel text
    # (True: Stages 8-9 take Stage 5's G, ``pixel_text``) set: the text controls (are the prompts' semantics what
    # helps?), then the class anchors grounded on the boxes (nn.ground), with real and shuffled prompts, then grounded
    # per-region routing (issue 13's mode, where a unit holds one defect), with the router's class affinity as is, then
    # with a background anchor (a region of background holds no class), then the grounded upgrade with the pixel text
    # (where grounding has taught Stage 5's assignment the classes)
    "shuffled": ({"text_control": "shuffled"}, [], False, "full upgrade, text control: shuffled"),
    "random": ({"text_control": "random"}, [], False, "full upgrade, text control: random"),
    "grounded": ({"ground_gain": GROUND_GAIN}, [], False, "+ anchors grounded on the boxes (ground_gain {gain:g})"),
    "grounded_shuffled": ({"ground_gain": GROUND_GAIN, "text_control": "shuffled"}, [], False,
                          "grounded upgrade, text control: shuffled"),
    "grounded_regions": ({"ground_gain": GROUND_GAIN}, ["switch", 4, 1], False,
                         "grounded upgrade (ground_gain {gain:g}), routed per region (4 x 4) with the router's class "
                         "affinity"),
    "grounded_regions_bg": ({"ground_gain": GROUND_GAIN}, ["switch", 4, 2], False,
                            "grounded upgrade (ground_gain {gain:g}), routed per region (4 x 4), class affinity with a "
                            "background anchor"),
    "grounded_pixel": ({"ground_gain": GROUND_GAIN}, [], True,
                       "grounded upgrade (ground_gain {gain:g}) with the pixel text: Stages 8-9 expand the class texts "
                       "by Stage 5's class assignment"),
}


VARIANTS = ("stock", *STAGES, *ON_FULL)  # --variants choices, in the order they are trained
GAINS = {  # the model-YAML gains a --variants entry may set (hyperbolic:align_gain=0.2), the letter that tags the
    # run's name (-a0.2), and the variants that have the term the gain scales
    "ground_gain": ("g", tuple(c for c, v in ON_FULL.items() if "ground_gain" in v[0])),
    "qfl_gain": ("q", ("full", *ON_FULL)),
    "moe_balance": ("b", ("experts", "full", *ON_FULL)),
    "align_gain": ("a", VARIANTS[1:]),
}


def pixel_text(d: dict) -> dict:
    """Give a model-yaml dict's cross-modal experts and ensemble the pixel text, in place: Stage 5's G (the
    HyperbolicAlign row) becomes the last ``from`` input of its SparseMoE and ExpertEnsemble rows."""
    g = next(i for i, row in enumerate(d["backbone"] + d["head"]) if row[2] == "HyperbolicAlign")
    for row in yaml_rows(d, "SparseMoE", "ExpertEnsemble"):
        row[0] = [*row[0], g]
    return d


def split_variant(variant: str) -> tuple[str, tuple[tuple[str, float], ...]]:
    """A --variants entry -> (variant, its gains in ``GAINS`` order): ``full:qfl_gain=4,moe_balance=0.1`` is the full
    upgrade with those two model-YAML gains; a bare number is the ground gain (``grounded_regions:2``). The order is
    fixed, so one setting written two ways names one run."""
    column, _, setting = variant.partition(":")
    if column not in VARIANTS:
        raise argparse.ArgumentTypeError(f"unknown variant {column!r}: choose from {', '.join(VARIANTS)}")
    gains = {}
    for item in filter(None, setting.split(",")):
        key, eq, value = item.rpartition("=")
        key = key if eq else "ground_gain"
        if key not in GAINS:
            raise argparse.ArgumentTypeError(f"{variant!r}: unknown gain {key!r}: choose from {', '.join(GAINS)}")
        if column not in GAINS[key][1]:
            raise argparse.ArgumentTypeError(f"{variant!r}: {key} applies only to {', '.join(GAINS[key][1])}")
        try:
            gains[key] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{variant!r}: the value of {key} must be a number") from None
    return column, tuple((k, gains[k]) for k in GAINS if k in gains)


def gain_tag(gains: tuple[tuple[str, float], ...]) -> str:
    """The run-name suffix of a variant's gains: (("ground_gain", 2.0), ("qfl_gain", 4.0)) -> '-g2-q4'."""
    return "".join(f"-{GAINS[k][0]}{v:g}" for k, v in gains)


def variant_arg(variant: str) -> str:
    split_variant(variant)  # argparse type: fails early, with the choices
    return variant


def finetune_variants(base: str, out: Path, keep=VARIANTS) -> dict[str, str]:
    """Name -> model of the runs ``--finetune-from base`` trains (those in ``keep``): the base checkpoint itself (the
    stock fine-tune), then the DS-MoE upgrade config at the base's scale cut to each stage column, then the full
    upgrade with the model-YAML keys of ``ON_FULL``. A variant in ``keep`` may carry loss gains (``GAINS``:
    ``full:qfl_gain=4`` is named with ``-q4``, ``grounded_regions:2`` with ``-g2``), so one call can sweep them."""
    from ultralytics.nn.tasks import load_checkpoint, yaml_model_load
    from ultralytics.utils import YAML

    from ultralytics_dsmoe.upgrade import upgrade_model

    source, _ = load_checkpoint(base)
    _, cfg = upgrade_model(source)  # the matching upgrade config; a base that does not match fails here, untrained
    scale = source.yaml.get("scale") or "n"
    stem = f"{Path(cfg).stem}{scale}"  # dsmoe-v8s
    variants = {Path(str(source.yaml.get("yaml_file", "base"))).stem or "base": str(Path(base).resolve())}
    out.mkdir(parents=True, exist_ok=True)
    wanted = list(dict.fromkeys(map(split_variant, keep)))  # (variant, its gains), once each
    for column in VARIANTS[1:]:
        for gains in (g for c, g in wanted if c == column):
            d = yaml_model_load(cfg)
            d.pop("yaml_file", None)
            d["scale"] = scale
            if column in STAGES:
                ablate(d, column)
            else:
                keys, routing, pixel, _ = ON_FULL[column]
                d.update(keys)
                if routing:
                    for row in yaml_rows(d, "SparseMoE"):
                        row[3] = [*row[3][:3], *routing]
                if pixel:
                    pixel_text(d)
            d.update(gains)
            tag = column + gain_tag(gains)
            name = stem if tag == "full" else f"{Path(cfg).stem}-{tag}-{scale}"  # scale last: the file name sets it
            YAML.save(out / f"{name}.yaml", d)
            variants[name] = str(out / f"{name}.yaml")
    return variants


def model_yaml(model: str, out: Path, pretrained: bool, topk: int | None = None) -> str:
    """The exact architecture a run trains, written to ``out/<name>.yaml`` (a ``.pt`` model is used as given).

    DS-MoE's encoder loads mobile_sam.pt only with ``pretrained`` (then it must be present), so 'from scratch' means
    the same for DS-MoE and YOLOv8."""
    if model.endswith(".pt"):
        return model
    from ultralytics.nn.tasks import yaml_model_load
    from ultralytics.utils import YAML

    from ultralytics_dsmoe.costs import set_experts

    d = yaml_model_load(model)
    d.pop("yaml_file", None)
    for row in yaml_rows(d, "MobileSAMEncoder", "HybridEncoder"):
        row[3] = ["download" if pretrained else "none", *row[3][1:]]
    name = Path(model).stem
    if topk is not None:
        set_experts(d, topk=topk)
        name = f"{name.rsplit('-', 1)[0]}-k{topk}-{d['scale']}" if d.get("scale") else f"{name}-k{topk}"
    out.mkdir(parents=True, exist_ok=True)
    YAML.save(out / f"{name}.yaml", d)
    return str(out / f"{name}.yaml")


def has_experts(model: str) -> bool:
    """Whether a model config routes through sparse experts (then the benchmark reports its routing)."""
    from ultralytics.nn.tasks import yaml_model_load

    if not model.endswith(".yaml"):
        return False
    return bool(yaml_rows(yaml_model_load(model), "SparseMoE"))


def file_digests(*paths) -> dict[str, str]:
    """Path -> sha256 of each of ``paths`` that is a file. A run's spec names its model yaml (rewritten by every call
    from the current config) and its source checkpoint by path; their digests make an edited config or a retrained
    base a new spec, trained again instead of reused."""
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest()
            for p in paths if isinstance(p, str) and Path(p).is_file()}


def train_and_evaluate(spec: dict) -> dict:
    """One model, in the worker process: train, time each step, evaluate best.pt on the report split."""
    import torch
    from ultralytics import YOLO

    cuda = str(spec["train"].get("device", "cpu")) not in {"cpu", "mps"} and torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = {"steps": [], "epochs": []}

    def start(key):
        def callback(trainer):
            sync()
            clock[key] = time.perf_counter()
        return callback

    def stop(key, into):
        def callback(trainer):
            sync()
            clock[into].append(time.perf_counter() - clock[key])
        return callback

    model = YOLO(spec["model"])
    for event, fn in (("on_train_batch_start", start("step")), ("on_train_batch_end", stop("step", "steps")),
                      ("on_train_epoch_start", start("epoch")), ("on_train_epoch_end", stop("epoch", "epochs"))):
        model.add_callback(event, fn)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.train(data=spec["data"], project=spec["project"], name=spec["name"], exist_ok=True, **spec["train"])
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    best = str(model.trainer.best if Path(model.trainer.best).exists() else model.trainer.last)
    checkpoint = YOLO(best)
    shares = []  # upgrades: |Z F(x)| / |x| at each ResidualGate on the evaluated images, how far training opened it
    for m in checkpoint.model.modules():
        if type(m).__name__ == "ResidualGate":
            m.register_forward_hook(lambda m, args, y: shares.append(float((y - args[0][0]).norm() / args[0][0].norm())))
    checkpoint.add_callback("on_val_start", lambda validator: shares.clear())  # not the warm-up's uninitialised input
    metrics = checkpoint.val(data=spec["data"], split=spec["split"], imgsz=spec["train"]["imgsz"],
                             batch=spec["train"]["batch"], device=spec["train"].get("device"), plots=False,
                             project=spec["project"], name=f"{spec['name']}-{spec['split']}", exist_ok=True)
    p, r = float(metrics.box.mp), float(metrics.box.mr)
    steps = clock["steps"][min(3, len(clock["steps"]) - 1):]  # the first steps pay for lazy initialisation
    return {
        "branch_share": statistics.mean(shares) if shares else None,
        "best": best, "map50": float(metrics.box.map50), "map50_95": float(metrics.box.map),
        "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "per_class_map50_95": {metrics.names[int(c)]: float(metrics.box.maps[c]) for c in metrics.ap_class_index},
        "epochs": len(clock["epochs"]), "epoch_s": statistics.mean(clock["epochs"]), "step_ms": 1e3 * statistics.median(steps),
        "peak_mem_mb": peak_cuda,
    }


def run_worker(spec: dict, folder: Path) -> dict:
    """``train_and_evaluate`` in a fresh Python process; on CPU its peak resident memory is the training memory.

    A finished run is reused when the benchmark is repeated with the identical spec (delete its
    ``<name>.result.json`` to train it again), so an interrupted benchmark resumes where it stopped."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = folder / f"{spec['name']}.spec.json", folder / f"{spec['name']}.result.json"
    done = json.loads(result_file.read_text()) if result_file.exists() else {}
    if done.get("spec") == spec and done.get("peak_mem_mb") is not None and Path(done["best"]).exists():
        made = done.get("dsmoe_version", "an unrecorded version")
        print(f"dsmoe benchmark: reusing the finished run {result_file}"
              + ("" if made == __version__ else f" (trained by ultralytics-dsmoe {made}, this is {__version__}; "
                 "delete it to train it with this version)"))
        return {k: v for k, v in done.items() if k != "spec"}
    result_file.unlink(missing_ok=True)
    spec_file.write_text(json.dumps(spec, indent=2))
    # While the worker trains, SIGTERM (kill, a job scheduler) raises SystemExit here like Ctrl-C raises
    # KeyboardInterrupt, so the worker stops with the benchmark; by default Python would die at once and leave it
    # training, orphaned. Only the main thread may set a handler; the previous one comes back afterwards.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum)) if in_main else None
    # SIGKILL reaches no handler: on Linux the kernel sends the worker SIGTERM when the benchmark dies (prctl)
    die_with_us = functools.partial(die_with_parent, os.getpid()) if sys.platform == "linux" else None
    proc = subprocess.Popen([sys.executable, "-m", "ultralytics_dsmoe.benchmark", "--worker", str(spec_file), str(result_file)],
                            preexec_fn=die_with_us)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_file.exists():
        raise RuntimeError(f"Training {spec['model']} failed (exit code {proc.returncode}); its log is above and its run "
                           f"folder is {Path(spec['project']) / spec['name']}.")
    result = json.loads(result_file.read_text())
    if result["peak_mem_mb"] is None:
        result["peak_mem_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
        result["peak_mem_kind"] = "process peak RSS (CPU)"
    else:
        result["peak_mem_kind"] = "torch.cuda.max_memory_allocated"
    result["dsmoe_version"] = __version__
    result_file.write_text(json.dumps({**result, "spec": spec}, indent=2))
    return result


def die_with_parent(parent: int) -> None:
    """Run in a new worker before it starts (Linux): SIGTERM it when ``parent`` dies, however it dies."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)


def measure_inference(results: dict, imgsz: int, device: str, reps: int) -> None:
    """Params, GFLOPs and batch-1 latency (PyTorch eager, then ONNX Runtime, each in interleaved rounds) of every
    best.pt, in place."""
    import numpy as np
    import torch
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import select_device

    from ultralytics_dsmoe.costs import latencies_ms, latency_rounds, model_costs, ort_session

    threads = torch.get_num_threads()  # --threads; Ultralytics' select_device (export too) resets it to cores - 1
    dev = select_device(str(device).split(",")[0], verbose=False)  # latency on one device, the first given
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    x = torch.rand(1, 3, imgsz, imgsz)
    eager, onnx = {}, {}
    for name, r in results.items():
        checkpoint = YOLO(r["best"])
        costs = model_costs(checkpoint.model.float().eval(), imgsz)  # before fusing: the trained params, unfolded
        r.update(params_M=costs["params_M"], gflops=costs["gflops"])
        file = checkpoint.export(format="onnx", imgsz=imgsz, batch=1, dynamic=False, simplify=False, device="cpu")
        torch.set_num_threads(threads)
        model = checkpoint.model.fuse().eval().to(dev)  # the exporter worked on its own copy
        xd = x.to(dev)
        eager[name] = lambda m=model, xd=xd: (m(xd), sync())
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        session = ort_session(file, threads, providers)
        feed = {session.get_inputs()[0].name: x.numpy().astype(np.float32)}
        onnx[name] = lambda s=session, f=feed: s.run(None, f)
        r["onnx"], r["ort_provider"] = file, session.get_providers()[0]
    for name, ms in latencies_ms(eager, reps).items():  # interleaved, drift hits all alike
        results[name]["eager_ms"] = ms
    for name, t in latency_rounds(onnx, reps).items():  # interleaved rounds; spinning is off in every session
        results[name].update(ort_ms=t["median"], ort_min_ms=t["min"], ort_max_ms=t["max"])


RUN_DEFAULTS = {"imgsz": 640, "epochs": 100, "batch": 8, "seed": 42, "device": "cpu", "workers": 2, "fraction": 1.0}
# (a --cfg recipe's value is used where the command line gives none)
RESERVED = {"data", "model", "project", "name", "exist_ok"}  # set per run by the benchmark, refused in a --cfg recipe
COST_KEYS = ("params_M", "gflops", "onnx", "ort_provider", "eager_ms", "ort_ms", "ort_min_ms", "ort_max_ms")
GAIN_TARGET_PP, COST_LIMIT = 1.5, 1.15  # the upgrade's targets: mAP50-95 gain beyond the seed spread, cost vs stock
MIN_SEEDS = 3  # a gain is judged on this many seeds or more: two that agree by chance are not a spread


def finetune_summary(results: dict, variants: list[str], seeds: list[int], base: str) -> dict:
    """Per variant: mean and std over seeds of mAP50 and mAP50-95, the paired gain over the stock model (the first
    variant) seed by seed, and its GFLOPs and ONNX Runtime latency against the stock model's.

    A gain counts (``beyond_spread``) only when its mean exceeds its standard deviation over ``MIN_SEEDS`` or more
    seeds; the upgrade's accuracy target is met when, on as many seeds, mean - std >= ``GAIN_TARGET_PP`` for the full
    upgrade."""
    stock = variants[0]
    rows = {}
    for v in variants:
        runs = [results[f"{v}-seed{s}"] for s in seeds]
        gains = [100 * (r["map50_95"] - results[f"{stock}-seed{s}"]["map50_95"]) for r, s in zip(runs, seeds)]
        mean_gain, std_gain = statistics.mean(gains), statistics.stdev(gains) if len(gains) > 1 else 0.0
        rows[v] = {"map50": mean_std([r["map50"] for r in runs]), "map50_95": mean_std([r["map50_95"] for r in runs]),
                   "gain_pp": [mean_gain, std_gain],
                   "beyond_spread": v != stock and len(seeds) >= MIN_SEEDS and abs(mean_gain) > std_gain,
                   "gflops_ratio": runs[0]["gflops"] / results[f"{stock}-seed{seeds[0]}"]["gflops"],
                   "ort": timing_verdict(ort_timing(runs[0]), ort_timing(results[f"{stock}-seed{seeds[0]}"]), COST_LIMIT),
                   "branch_share": mean_std(shares) if (shares := [r["branch_share"] for r in runs
                                                                    if r.get("branch_share") is not None]) else None}
    full = next((v for v in variants[1:] if column_of(v) == "full" and not variant_gains(v)), None)
    targets = {}
    if full:
        (gain, std), r = rows[full]["gain_pp"], rows[full]
        enough = len(seeds) >= MIN_SEEDS
        targets = {f"{full} mAP50-95 gain - std (pp)": [gain - std, GAIN_TARGET_PP, enough and gain - std >= GAIN_TARGET_PP],
                   f"{full} GFLOPs vs {stock}": [r["gflops_ratio"], COST_LIMIT, r["gflops_ratio"] <= COST_LIMIT],
                   f"{full} ONNX Runtime latency vs {stock}": [r["ort"]["value"], COST_LIMIT, r["ort"]["met"]]}
    return {"base": base, "stock": stock, "seeds": seeds, "variants": rows, "targets": targets}


def mean_std(values: list[float]) -> list[float]:
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def judge(results: dict) -> dict:
    """The targets, dsmoe-n against each reference in ``REFERENCES`` that was benchmarked in the same run.

    ``met`` is True or False, or None when the ONNX Runtime spreads over rounds straddle the limit (unclear)."""
    if "dsmoe-n" not in results:
        return {}
    d, verdict = results["dsmoe-n"], {}
    for ref in (r for r in REFERENCES if r in results):
        y = results[ref]
        for label, (key, kind, limit) in TARGETS.items():
            if kind == "gain_pp":
                value = 100 * (d[key] - y[key])
                verdict[f"{label} vs {ref}"] = {"value": value, "limit": limit, "met": value >= limit}
                continue
            ratio = d[key] / y[key]
            verdict[f"{label} vs {ref}"] = (timing_verdict(ort_timing(d), ort_timing(y), limit) if key == "ort_ms"
                                            else ratio_verdict(ratio, ratio, ratio, limit))
    return verdict


MET = {True: "yes", False: "no", None: "unclear (spreads overlap)"}


def target_row(name: str, t: dict, digits: int = 2) -> str:
    """A ``| target | measured | spread | limit | met |`` row; the spread is left blank where the figure has none."""
    low, high = t.get("range") or (None, None)
    spread = "" if low == high else f"{low:.2f}-{high:.2f}"
    return f"| {name} | {t['value']:.{digits}f} | {spread} | {t['limit']} | {MET[t['met']]} |"


def ratio_verdict(value: float, low: float, high: float, limit: float) -> dict:
    """An 'at most limit' target: met when the whole range [low, high] is within it, missed when none of it is, and
    None (unclear) when the range straddles it; the one rule of ``dsmoe benchmark`` and ``ultralytics_dsmoe.costs``."""
    return {"value": value, "range": [low, high], "limit": limit,
            "met": True if high <= limit else False if low > limit else None}


def timing_verdict(a: dict, b: dict, limit: float) -> dict:
    """'a takes at most limit x b's time', for timings given as median, min and max over interleaved rounds: the
    range runs from a's best case against b's worst (a's min over b's max) to the reverse."""
    return ratio_verdict(a["median"] / b["median"], a["min"] / b["max"], a["max"] / b["min"], limit)


def ort_timing(r: dict) -> dict:
    """A model's ONNX Runtime timing from its benchmark figures (median only in reports made before the spread)."""
    return {"median": r["ort_ms"], "min": r.get("ort_min_ms", r["ort_ms"]), "max": r.get("ort_max_ms", r["ort_ms"])}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# DS-MoE vs YOLOv8 on {s['data']}", "",
             f"Generated by `dsmoe {' '.join(s['argv'])}` on {s['device']} ({s['date']}). Training: "
             + ", ".join(f"{k}={v}" for k, v in s["train"].items()) + f". Metrics on the {s['split']} split; latency "
             f"batch 1 at {s['latency_imgsz']} px, median of {s['reps']} interleaved rounds after 2 warm-up rounds (ONNX "
             "Runtime: thread spinning off, min-max over rounds in brackets).", "",
             "| model | mAP50 | mAP50-95 | P | R | F1 | params (M) | GFLOPs | s/epoch | step (ms) | peak mem (MB) | eager (ms) | ORT (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["models"].items():
        lines.append(f"| {name} | {r['map50']:.3f} | {r['map50_95']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['f1']:.3f} | {r['params_M']:.2f} | {r['gflops']:.1f} | {r['epoch_s']:.1f} | {r['step_ms']:.0f} | "
                     f"{r['peak_mem_mb']:.0f} | {r['eager_ms']:.1f} | {r['ort_ms']:.1f}{spread(r)} |")
    if report["targets"]:
        lines += ["", "## Targets (dsmoe-n against yolov8s and yolo26s, this run)", "",
                  "| target | measured | spread | limit | met |", "|---|---:|---:|---:|---|"]
        lines += [target_row(k, v) for k, v in report["targets"].items()]
    if report["topk"]:
        lines += ["", "## Top-k sweep (the paper's Table 5 columns)", "",
                  "| k | mAP50 | eager (ms) | ORT (ms) | GFLOPs | recall | F1 |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for k, name in report["topk"].items():
            r = report["models"][name]
            lines.append(f"| {k} | {r['map50']:.3f} | {r['eager_ms']:.1f} | {r['ort_ms']:.1f} | {r['gflops']:.2f} | "
                         f"{r['recall']:.3f} | {r['f1']:.3f} |")
    if report.get("finetune"):
        f = report["finetune"]
        lines += ["", f"## Fine-tuned from {Path(f['base']).name} (seeds {', '.join(map(str, f['seeds']))})", "",
                  "Every variant starts from the same checkpoint and trains with the recipe above. Gain: mAP50-95 minus the "
                  f"stock model's, paired seed by seed, mean +- std (pp); 'counts' when |mean| > std over at least "
                  f"{MIN_SEEDS} seeds ('-' with fewer). Cost: against "
                  f"{f['stock']}.", "",
                  "Branch share: |Z F(x)| / |x| at the upgrade's gate on the report split, how far training opened it.",
                  "", "| variant | what it adds | mAP50 | mAP50-95 | gain (pp) | counts | GFLOPs x | ORT latency x | "
                  "branch share |", "|---|---|---:|---:|---:|---|---:|---:|---:|"]
        for v, r in f["variants"].items():
            what = "stock fine-tune" if v == f["stock"] else column_label(v)
            lines.append(f"| {v} | {what} | {r['map50'][0]:.3f} +- {r['map50'][1]:.3f} | {r['map50_95'][0]:.3f} +- "
                         f"{r['map50_95'][1]:.3f} | {r['gain_pp'][0]:+.2f} +- {r['gain_pp'][1]:.2f} | "
                         f"{'-' if v == f['stock'] or len(f['seeds']) < MIN_SEEDS else 'yes' if r['beyond_spread'] else 'no'} | "
                         f"{r['gflops_ratio']:.3f} | {r['ort']['value']:.2f}{ratio_range(r['ort'])} | "
                         f"{'-' if r.get('branch_share') is None else '%.3f +- %.3f' % tuple(r['branch_share'])} |")
        if f["targets"]:  # judged on the plain full upgrade only: none when this run did not train it
            lines += ["", "| upgrade target | measured | limit | met |", "|---|---:|---:|---|"]
            lines += [f"| {k} | {v:.3f} | {lim} | {MET[met]} |" for k, (v, lim, met) in f["targets"].items()]
    if report.get("earlier"):
        lines += ["", "## Earlier runs in this folder, not in this call", "",
                  "Trained, evaluated and timed by an earlier call, with that call's settings; its latency was "
                  "measured on another load, so no ratio or verdict above uses these rows.", "",
                  "| model | mAP50 | mAP50-95 | GFLOPs | ORT (ms) | measured by |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {k} | {fmt(r.get('map50'))} | {fmt(r.get('map50_95'))} | {r.get('gflops', float('nan')):.1f} | "
                  f"{r.get('ort_ms', float('nan')):.1f} | `dsmoe {' '.join(r['call']['argv'])}` ({r['call']['date']}) |"
                  for k, r in report["earlier"].items()]
    routing = {k: r["routing"] for k, r in report["models"].items() if r.get("routing")}
    if routing:
        lines += ["", "## Expert routing (report split)", "",
                  "NMI: class-expert over all routed units, defect-expert over those holding a defect; in brackets the "
                  "chance level, the NMI with classes shuffled among the units.", "",
                  "| model | routed per | experts used | max share | normalised entropy | Switch loss | class-expert NMI | "
                  "defect-expert NMI | expert similarity |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {routed_per(v)} | {v['experts_used']}/{v['experts']} | {v['max_share']:.2f} | {v['entropy']:.2f} | "
                  f"{v['switch_loss']:.2f} | {nmi_cell(v, 'class')} | {nmi_cell(v, 'defect')} | "
                  f"{fmt(v.get('expert_similarity'))} |" for k, v in routing.items()]
    return "\n".join(lines) + "\n"


def column_of(variant: str) -> str:
    """The --variants key of a fine-tune variant's name (dsmoe-v8-text-s -> text, dsmoe-v8s -> full)."""
    parts = variant.split("-")
    return next((p for p in parts if p in (*STAGES, *ON_FULL)), "full")


def variant_gains(variant: str) -> dict[str, float]:
    """The gains a fine-tune variant's name sets (dsmoe-v8-full-q4-a0.2-s -> {'qfl_gain': 4, 'align_gain': 0.2})."""
    keys = {letter: k for k, (letter, _) in GAINS.items()}
    return {keys[p[0]]: float(p[1:]) for p in variant.split("-") if p[:1] in keys and p[1:2].isdigit()}


def column_label(variant: str) -> str:
    """What a fine-tune variant adds, with the gains its name sets (the ground gain else ``GROUND_GAIN``)."""
    column, gains = column_of(variant), variant_gains(variant)
    ground = gains.pop("ground_gain", GROUND_GAIN)
    label = ON_FULL[column][-1].format(gain=ground) if column in ON_FULL else STAGES[column]
    return label + "".join(f"; {k} {v:g}" for k, v in gains.items())


def routed_per(routing: dict) -> str:
    s = routing.get("regions", 1)
    return "image" if s == 1 else f"region ({s} x {s})"


def nmi_cell(routing: dict, of: str) -> str:
    """'0.064 (0.031)': a routing report's class- or defect-expert NMI with its chance level (older reports: NMI only)."""
    value, chance = routing.get(f"{of}_expert_nmi"), routing.get(f"{of}_expert_nmi_chance")
    return fmt(value) + ("" if chance is None else f" ({chance:.3f})")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"  # reports written before the figure existed lack it


def ratio_range(verdict: dict) -> str:
    low, high = verdict["range"]
    return "" if low == high else f" [{low:.2f}-{high:.2f}]"


def spread(r: dict) -> str:
    return f" [{r['ort_min_ms']:.0f}-{r['ort_max_ms']:.0f}]" if "ort_min_ms" in r else ""


def plot(report: dict, file: Path) -> None:
    """Accuracy against cost: per model (latency, GFLOPs, step time), or against k for a top-k sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, topk = report["models"], report["topk"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    if topk:
        runs = [models[name] for name in topk.values()]
        for ax, key, label in zip(axes, ("map50", "ort_ms", "gflops"), ("mAP50", "ONNX Runtime latency (ms)", "GFLOPs")):
            ax.plot(list(topk), [r[key] for r in runs], "o-", color="C1")
            ax.set_xscale("log", base=2)
            ax.set(xticks=list(topk), xticklabels=list(topk), xlabel="top-k experts", ylabel=label)
            ax.minorticks_off()
            ax.grid(alpha=0.3)
    else:
        for ax, key, label in zip(axes, ("ort_ms", "gflops", "step_ms"),
                                  ("ONNX Runtime latency (ms, batch 1)", "GFLOPs", "training step (ms)")):
            for name, r in models.items():
                ax.scatter(r[key], 100 * r["map50_95"], s=40, color="C1" if name.startswith("dsmoe") else "C0")
                ax.annotate(name, (r[key], 100 * r["map50_95"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set(xlabel=label, ylabel="mAP50-95 (%)")
            ax.grid(alpha=0.3)
    fig.suptitle(f"{report['settings']['data']}: {report['settings']['split']} split, {report['settings']['device']}")
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def preflight(models: list[str], device: str, pretrained: bool) -> None:
    """Everything the benchmark will need, checked before it trains anything: a problem found after hours of
    training is a problem found too late. Raises ``ValueError`` listing every problem with its fix."""
    from ultralytics.nn.tasks import yaml_model_load
    from ultralytics.utils import WEIGHTS_DIR
    from ultralytics.utils.torch_utils import select_device

    from ultralytics_dsmoe.nn.encoder import MOBILESAM_FILE
    from ultralytics_dsmoe.text import encoders

    problems = []
    for module in ("onnx", "onnxruntime"):  # the ONNX export and its ONNX Runtime latency, measured last
        try:
            __import__(module)
        except ImportError as e:
            problems.append(f"{module} cannot be imported ({e}); it is a dependency of ultralytics-dsmoe: "
                            f"pip install {module}")
    if "," in str(device).strip(","):
        problems.append(f"device {device!r}: the benchmark trains on one device (Ultralytics runs multi-GPU training "
                        "in a subprocess, where its step times and peak memory cannot be read); use --device 0")
    try:
        select_device(device, verbose=False)
    except Exception as e:  # Ultralytics raises ValueError for a missing CUDA device
        problems.append(f"device {device!r}: {str(e).splitlines()[0]}")
    for model in models:
        if model.endswith(".pt"):
            if not Path(model).is_file():
                problems.append(f"{model}: no such checkpoint")
            continue
        d, name = yaml_model_load(model), Path(model).name
        if pretrained and not name.startswith("dsmoe") and encoders.offline():  # YOLO starts from its COCO .pt
            weights = f"{Path(model).stem}.pt"
            if not (Path(weights).is_file() or (WEIGHTS_DIR / weights).is_file()):
                problems.append(f"{name}: --pretrained needs {weights}, which cannot be downloaded offline; put it "
                                f"in {WEIGHTS_DIR}")
        encoder_weights = {str(r[3][0]) for r in yaml_rows(d, "MobileSAMEncoder", "HybridEncoder")}
        local = Path(MOBILESAM_FILE).is_file() or (WEIGHTS_DIR / MOBILESAM_FILE).is_file()
        if "download" in encoder_weights and encoders.offline() and not local:
            problems.append(f"{name}: --pretrained needs {MOBILESAM_FILE}, which cannot be downloaded "
                            f"offline; put it in {WEIGHTS_DIR}")
        text_model = str(d.get("text_model") or "auto")
        if text_model.lower() not in {"auto", encoders.MINILM}:
            if encoders.offline() and not encoders.llm_cached(text_model):
                problems.append(f"{name}: text_model {text_model!r} is not cached and Ultralytics is "
                                "offline; use a local folder, `minilm`, or `auto`")
    if problems:
        raise ValueError("dsmoe benchmark cannot run; nothing was trained:\n  " + "\n  ".join(problems))


def benchmark(a: argparse.Namespace, argv: list[str]) -> dict:
    import torch
    from ultralytics.utils import YAML, checks

    recipe = dict(YAML.load(checks.check_yaml(a.cfg))) if a.cfg else {}
    if reserved := sorted(set(recipe) & RESERVED):
        raise ValueError(f"--cfg {a.cfg} sets {reserved}, which the benchmark sets for each run; remove them")
    for key, default in RUN_DEFAULTS.items():  # the command line wins over the recipe, the recipe over the default
        if getattr(a, key) is None:
            setattr(a, key, recipe.get(key, default))
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = stage_dataset(a.data, out / "data", a.gamma)
    has_test = bool(YAML.load(data).get("test"))
    split = a.split or ("test" if has_test else "val")
    train = {**recipe, "imgsz": a.imgsz, "epochs": a.epochs, "batch": a.batch, "seed": a.seed, "device": a.device,
             "workers": a.workers, "pretrained": a.pretrained, "fraction": a.fraction}
    seeds = a.seeds or [a.seed]
    if a.finetune_from:
        variants = finetune_variants(a.finetune_from, out / "models", a.variants)
        runs = {f"{v}-seed{seed}": (m, seed) for v, m in variants.items() for seed in seeds}
    elif a.topk:
        base = next((m for m in a.models if Path(m).stem.startswith("dsmoe")), "dsmoe-n.yaml")
        runs = {Path(m).stem: (m, a.seed) for m in (model_yaml(base, out / "models", a.pretrained, k) for k in a.topk)}
    else:
        stems = [Path(m).stem for m in a.models]
        if clash := sorted({s for s in stems if stems.count(s) > 1}):
            raise ValueError(f"--models {' '.join(a.models)}: {clash} name more than one model, and each run is named "
                             "by its file name; copy one checkpoint to another name (e.g. line-a.pt, line-b.pt)")
        runs = {Path(m).stem: (m, a.seed) for m in (model_yaml(m, out / "models", a.pretrained) for m in a.models)}
    preflight([m for m, _ in runs.values()], a.device, a.pretrained)
    results = {}
    for name, (model, seed) in runs.items():
        weights = a.pretrained and model.endswith(".yaml") and not name.startswith("dsmoe")  # YOLO: its COCO .pt
        pretrained = str(Path(a.finetune_from).resolve()) if a.finetune_from else f"{name}.pt" if weights else a.pretrained
        spec = {"model": model, "data": str(data), "project": str(out / "runs"), "name": name, "split": split,
                "train": {**train, "seed": seed, "pretrained": pretrained}, "sha256": file_digests(model, pretrained)}
        results[name] = run_worker(spec, out / "runs")
        if has_experts(model):
            from ultralytics_dsmoe.routing import routing_report

            results[name]["routing"] = routing_report(results[name]["best"], str(data), split, a.imgsz, a.batch, a.device,
                                                      out / "routing" / name)
    torch.set_num_threads(a.threads)
    if a.finetune_from:  # cost is per architecture: measured on each variant's first seed, shared by its other seeds
        first = {v: results[f"{v}-seed{seeds[0]}"] for v in variants}
        measure_inference(first, a.latency_imgsz, a.device, a.reps)
        for v in variants:
            for seed in seeds[1:]:
                results[f"{v}-seed{seed}"].update({k: first[v][k] for k in COST_KEYS if k in first[v]})
    else:
        measure_inference(results, a.latency_imgsz, a.device, a.reps)
    device = "CUDA " + torch.cuda.get_device_name(0) if str(a.device) not in {"cpu", "mps"} and torch.cuda.is_available() else \
        f"CPU ({cpu_name()}, {os.cpu_count()} cores; latency with {a.threads} torch threads)"
    report = {"settings": {"argv": ["benchmark", *argv], "data": a.data, "split": split, "train": train, "device": device,
                           "latency_imgsz": a.latency_imgsz, "reps": a.reps, "date": time.strftime("%Y-%m-%d"),
                           "torch": torch.__version__},
              "models": results, "targets": judge(results),
              "topk": {k: name for k, name in zip(a.topk, runs)} if a.topk else {},
              "finetune": finetune_summary(results, list(variants), seeds, a.finetune_from) if a.finetune_from else {},
              "earlier": earlier_runs(out / "results.json", results)}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report))
    plot(report, out / "results.png")
    return report


def earlier_runs(previous: Path, results: dict) -> dict:
    """The rows of the folder's previous report (``previous``, its results.json) that this call did not run, each
    with the call that measured it, so a benchmark built up over several calls keeps every model in its report. They
    were timed in another call, on another load, so no ratio or verdict uses them."""
    if not previous.is_file():
        return {}
    try:
        old = json.loads(previous.read_text())
        call = {k: old["settings"][k] for k in ("argv", "date")}
        rows = {**old.get("earlier", {}), **{k: {**r, "call": call} for k, r in old["models"].items()}}
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # not a report this plugin wrote: nothing to keep
        print(f"dsmoe benchmark: {previous} is not a readable benchmark report ({type(e).__name__}: {e}); its rows "
              "are not carried over", file=sys.stderr)
        return {}
    return {k: r for k, r in rows.items() if k not in results}


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # internal: one training run in a fresh process
        spec_file, result_file = argv[1:3]
        Path(result_file).write_text(json.dumps(train_and_evaluate(json.loads(Path(spec_file).read_text()))))
        return None
    p = argparse.ArgumentParser(prog="dsmoe benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="data yaml (a shipped name like aluminum.yaml, or a path)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="model yamls or .pt files")
    p.add_argument("--topk", nargs="*", type=int, help=f"sweep the first DS-MoE model's top-k instead (bare: {TOPK})")
    p.add_argument("--imgsz", type=int, help=f"default: the --cfg recipe's, else {RUN_DEFAULTS['imgsz']} (as below)")
    p.add_argument("--epochs", type=int, help=f"default: {RUN_DEFAULTS['epochs']}")
    p.add_argument("--batch", type=int, help=f"default: {RUN_DEFAULTS['batch']}")
    p.add_argument("--seed", type=int, help=f"default: {RUN_DEFAULTS['seed']}")
    p.add_argument("--seeds", nargs="+", type=int, help="with --finetune-from: train every variant once per seed")
    p.add_argument("--finetune-from", help="a trained YOLOv8/YOLO11 checkpoint: fine-tune it, its DS-MoE upgrade, the "
                   "stage ablation and the text controls from it (replaces --models)")
    p.add_argument("--variants", nargs="+", type=variant_arg, default=list(VARIANTS), metavar="VARIANT",
                   help=f"with --finetune-from: which runs, of {', '.join(VARIANTS)} (the stock model always; a long "
                   "benchmark can be built up over several calls, finished runs are reused); one may set loss gains "
                   f"({', '.join(GAINS)}), e.g. full:qfl_gain=4 or experts:align_gain=0.2,moe_balance=0.1 (a bare "
                   "number is the ground gain: grounded_regions:2)")
    p.add_argument("--device", help="Ultralytics device, one: cpu (default), 0, 1 ...")
    p.add_argument("--workers", type=int, help=f"default: {RUN_DEFAULTS['workers']}")
    p.add_argument("--fraction", type=float, help="fraction of the training set to use (default: 1.0)")
    p.add_argument("--pretrained", action="store_true", help="start from pretrained weights (default: from scratch)")
    p.add_argument("--cfg", help="Ultralytics cfg override yaml for every model, e.g. paper-recipe.yaml")
    p.add_argument("--gamma", type=float, help="apply the gamma transform s = r^gamma to every image (paper: 1.5)")
    p.add_argument("--split", help="split to report (default: test if the data has one, else val)")
    p.add_argument("--latency-imgsz", type=int, default=640)
    p.add_argument("--reps", type=int, default=20, help="latency rounds (every model once per round)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads for eager latency")
    p.add_argument("--out", type=Path, default=Path("benchmarks/run"))
    a = p.parse_args(argv)
    if a.topk is not None and not a.topk:
        a.topk = list(TOPK)
    report = benchmark(a, argv)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
