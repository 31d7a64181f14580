"""`dsmoe benchmark` and `dsmoe routing`: the dataset view, the per-model figures, the targets and the routing report."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils import YAML

from ultralytics_dsmoe import benchmark
from ultralytics_dsmoe.data.synthetic import generate
from ultralytics_dsmoe.nn import MobileSAMEncoder, SparseMoE
from ultralytics_dsmoe.routing import routing_report

NAMES = {0: "pinhole", 1: "scratch", 2: "stain", 3: "crease"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A user's dataset folder (made read-only by convention: nothing may be written into it) and its yaml."""
    root = tmp_path_factory.mktemp("bench")
    generate(root / "set", seed=2, train=8, val=4, imgsz=64)
    (root / "prompts.yaml").write_text("pinhole: a tiny dark pit\n")
    YAML.save(root / "set" / "data.yaml", {"train": "images/train", "val": "images/val", "names": NAMES,
                                            "prompts": "../prompts.yaml"})
    return root


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_dataset_view_keeps_the_users_folder_untouched(dataset, tmp_path):
    before = files(dataset / "set")
    view = benchmark.stage_dataset(str(dataset / "set" / "data.yaml"), tmp_path / "data", gamma=1.5)
    d = YAML.load(view)
    assert d["gamma"] == 1.5 and d["names"] == NAMES and "test" not in d
    assert d["prompts"] == str(dataset / "prompts.yaml")  # relative to the original yaml, made absolute
    images = sorted((tmp_path / "data" / "images" / "train").iterdir())
    assert len(images) == 8 and all(p.is_symlink() for p in images)
    label = tmp_path / "data" / "labels" / "train" / f"{images[0].stem}.txt"
    assert label.resolve() == (dataset / "set" / "labels" / "train" / label.name).resolve()
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(view))
    ds = build_yolo_dataset(get_cfg(overrides={"imgsz": 64}), data["train"], 2, data, mode="val")
    assert len(ds) == 8 and sum(len(lb["cls"]) for lb in ds.labels) > 0
    assert (tmp_path / "data" / "labels" / "train.cache").is_file()  # the cache lands in the view
    assert files(dataset / "set") == before
    assert benchmark.stage_dataset(str(dataset / "set" / "data.yaml"), tmp_path / "data", gamma=1.5) == view  # again
    # a folder's finished runs are reused by name: another gamma, or another dataset, is refused there
    with pytest.raises(ValueError, match="gamma 1.5.*would be reused.*gamma None"):
        benchmark.stage_dataset(str(dataset / "set" / "data.yaml"), tmp_path / "data", gamma=None)
    other = dataset / "other"
    generate(other, seed=3, train=2, val=2, imgsz=64)
    YAML.save(other / "data.yaml", {"train": "images/train", "val": "images/val", "names": NAMES})
    with pytest.raises(ValueError, match=f"holds a benchmark of {dataset / 'set' / 'data.yaml'}.*Use another --out"):
        benchmark.stage_dataset(str(other / "data.yaml"), tmp_path / "data", gamma=1.5)
    assert len(list((tmp_path / "data" / "images" / "train").iterdir())) == 8  # nothing of the other set staged
    # a view copied without its links (plain files where the links were) is named, not overwritten
    images[0].unlink()
    images[0].write_text(str(dataset / "set" / "images" / "train" / images[0].name))
    with pytest.raises(FileExistsError, match=f"{images[0]} is a file, not a link.*Delete that folder"):
        benchmark.stage_dataset(str(dataset / "set" / "data.yaml"), tmp_path / "data", gamma=1.5)


def first_spec(monkeypatch, argv: list[str]) -> dict:
    """The spec `dsmoe benchmark argv` would train its first run with; nothing is trained."""
    seen = []

    class Seen(Exception):
        pass

    def run_worker(spec, folder):
        seen.append(spec)
        raise Seen

    monkeypatch.setattr(benchmark, "run_worker", run_worker)
    with pytest.raises(Seen):
        benchmark.main(argv)
    return seen[0]


def test_the_command_line_wins_over_the_recipe_and_the_recipe_over_the_defaults(dataset, tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("imgsz: 96\nepochs: 7\nlr0: 0.002\n")
    train = first_spec(monkeypatch, ["--data", str(dataset / "set" / "data.yaml"), "--models", "yolov8n.yaml", "--cfg",
                                     str(recipe), "--epochs", "2", "--out", str(tmp_path / "b")])["train"]
    assert (train["imgsz"], train["epochs"], train["lr0"], train["batch"], train["seed"]) == (96, 2, 0.002, 8, 42)


@pytest.mark.parametrize("args, message", [
    (["--cfg", "RECIPE"], r"sets \['name'\], which the benchmark sets for each run"),
    (["--device", "0,1"], "trains on one device"),
    (["--models", "a/best.pt", "b/best.pt"], r"\['best'\] name more than one model"),
])
def test_benchmark_refuses_settings_it_cannot_honour_before_training(dataset, tmp_path, monkeypatch, args, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: mine\n")
    for folder in "ab":
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "best.pt").write_bytes(b"weights")
    monkeypatch.setattr(benchmark, "run_worker", lambda *a: pytest.fail("trained before checking"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        benchmark.main(["--data", str(dataset / "set" / "data.yaml"), "--models", "yolov8n.yaml",
                        *[str(recipe) if a == "RECIPE" else a for a in args], "--out", str(tmp_path / "b")])


def test_topk_models_and_scratch_encoder(tmp_path):
    file = benchmark.model_yaml("dsmoe-n.yaml", tmp_path, pretrained=False, topk=2)
    assert file.endswith("dsmoe-k2-n.yaml")
    model = YOLO(file).model
    moe = next(m for m in model.modules() if isinstance(m, SparseMoE))
    assert (moe.ne, moe.k) == (32, 2)
    assert yaml_model_load(file)["backbone"][0][3][0] == "none"  # never mobile_sam.pt unless --pretrained
    assert any(isinstance(m, MobileSAMEncoder) for m in model.modules())
    assert benchmark.model_yaml("best.pt", tmp_path, pretrained=False) == "best.pt"


def test_targets_are_judged_dsmoe_n_against_yolov8s_and_yolo26s():
    y = {"map50_95": 0.40, "ort_ms": 100.0, "ort_min_ms": 95.0, "ort_max_ms": 110.0, "step_ms": 200.0, "peak_mem_mb": 1000.0}
    z = {**y, "ort_ms": 80.0, "ort_min_ms": 78.0, "ort_max_ms": 82.0}
    d = {"map50_95": 0.43, "ort_ms": 90.0, "ort_min_ms": 85.0, "ort_max_ms": 92.0, "step_ms": 290.0, "peak_mem_mb": 1600.0}
    verdict = benchmark.judge({"yolov8s": y, "yolo26s": z, "dsmoe-n": d})
    values = {k: (round(v["value"], 4), v["met"]) for k, v in verdict.items()}
    assert values == {"mAP50-95 gain (pp) vs yolov8s": (3.0, True), "ONNX Runtime latency vs yolov8s": (0.9, True),
                      "training-step time vs yolov8s": (1.45, True), "peak training memory vs yolov8s": (1.6, False),
                      "mAP50-95 gain (pp) vs yolo26s": (3.0, True), "ONNX Runtime latency vs yolo26s": (1.125, False),
                      "training-step time vs yolo26s": (1.45, True), "peak training memory vs yolo26s": (1.6, False)}
    assert verdict["ONNX Runtime latency vs yolov8s"]["range"] == [85.0 / 110.0, 92.0 / 95.0]  # max 0.97 <= 1: met
    noisy = {**d, "ort_min_ms": 70.0, "ort_max_ms": 120.0}  # the spread straddles the limit: no verdict
    assert benchmark.judge({"yolov8s": y, "dsmoe-n": noisy})["ONNX Runtime latency vs yolov8s"]["met"] is None
    assert benchmark.judge({"yolov8n": y, "dsmoe-n": d}) == {}  # no reference in the run: nothing to judge


@pytest.mark.parametrize("regions", [1, 2])
def test_routing_report_counts_match_per_image_routing(dataset, tmp_path, regions):
    """Per image and per region of a 2 x 2 grid: the report's counts equal routing each val image alone."""
    torch.manual_seed(0)
    d = yaml_model_load("dsmoe-n.yaml")
    for row in d["backbone"] + d["head"]:
        if row[2] == "SparseMoE":
            row[3] = [*row[3][:3], "switch", regions]
    model = YOLO("dsmoe-n.yaml")
    model.model = DetectionModel(d, verbose=False)
    model.model.yaml["scale"], model.model.names = "n", dict(NAMES)  # as trained on the data: routing checks the names
    for m in model.model.modules():  # a spread of routings, as after training
        if isinstance(m, SparseMoE):
            torch.nn.init.normal_(m.router.queries, std=3.0)
    weights = tmp_path / "m.pt"
    model.save(weights)
    data = str(dataset / "set" / "data.yaml")
    report = routing_report(str(weights), data, "val", imgsz=64, batch=3, out=tmp_path / "r")
    assert (tmp_path / "r" / "routing.png").stat().st_size > 0
    assert (tmp_path / "r" / "regions.png").is_file() == (regions > 1)
    assert json.loads((tmp_path / "r" / "routing.json").read_text())["experts_used"] == report["experts_used"]
    assert report["images"] == 4 and report["units"] == 4 * regions**2 and report["k"] == 5
    assert abs(sum(report["share"]) - 1) < 1e-6
    for name, row in report["usage"].items():  # each unit picks k experts: a class's row sums to k
        assert abs(sum(row) - 5) < 1e-5, name
    assert 0 <= report["class_expert_nmi"] <= 1
    for of in ("class", "defect"):
        assert 0 <= report[f"{of}_expert_nmi_chance"] <= 1 and 0 <= report[f"{of}_expert_nmi"] <= 1
    if "background" not in report["usage"]:  # every unit holds a defect: the two NMIs are one
        assert report["defect_expert_nmi"] == pytest.approx(report["class_expert_nmi"])
    # reference: route each val image alone and count
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    net = YOLO(str(weights)).model.float().eval()
    moe = next(m for m in net.modules() if isinstance(m, SparseMoE))
    d = check_det_dataset(data)
    ds = build_yolo_dataset(get_cfg(overrides={"imgsz": 64, "rect": False}), d["val"], 1, d, mode="val")
    slots = torch.zeros(32)
    with torch.no_grad():
        for i in range(len(ds)):
            net(ds[i]["img"][None].float() / 255)
            slots += F.one_hot(moe.last_routing[1], 32).sum((0, 1)).float()  # (regions^2, k) per image
    assert torch.allclose(torch.tensor(report["share"]), slots / slots.sum(), atol=1e-6)
    assert report["experts_used"] == int((slots > 0).sum()) >= 5
    assert 1 - 1e-6 <= report["switch_loss"] <= 32 / 5 + 1e-6


def test_benchmark_end_to_end(dataset, tmp_path):
    """Two models, 1 epoch at 64 px: every figure of the table, the plot, routing and the exported ONNX files."""
    out = tmp_path / "bench"
    r = run([sys.executable, "-m", "ultralytics_dsmoe.cli", "benchmark", "--data", str(dataset / "set" / "data.yaml"),
             "--models", "yolov8n.yaml", "dsmoe-n.yaml", "--imgsz", "64", "--epochs", "1", "--batch", "4",
             "--workers", "0", "--latency-imgsz", "64", "--reps", "2", "--threads", "1", "--out", str(out)], REPO)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert list(report["models"]) == ["yolov8n", "dsmoe-n"] and report["settings"]["split"] == "val"
    assert report["settings"]["train"]["seed"] == 42 and report["settings"]["train"]["pretrained"] is False
    for name, m in report["models"].items():
        assert 0 <= m["map50_95"] <= m["map50"] <= 1 and m["epochs"] == 1
        assert m["params_M"] > 1 and m["gflops"] > 0 and m["step_ms"] > 0 and m["peak_mem_mb"] > 100
        assert m["eager_ms"] > 0 and m["ort_ms"] > 0 and m["onnx"].endswith(".onnx")
    assert report["models"]["dsmoe-n"]["gflops"] > report["models"]["yolov8n"]["gflops"]
    assert report["models"]["dsmoe-n"]["routing"]["experts_used"] >= 5 and "routing" not in report["models"]["yolov8n"]
    assert report["targets"] == {}  # no yolov8s in this run
    table = (out / "results.md").read_text()
    assert "| yolov8n |" in table and "| dsmoe-n |" in table and (out / "results.png").stat().st_size > 0
    assert (out / "routing" / "dsmoe-n" / "routing.png").is_file()


def test_dsmoe_command_lists_its_subcommands():
    r = run([sys.executable, "-m", "ultralytics_dsmoe.cli"], REPO)
    assert r.returncode == 2 and all(c in r.stderr for c in ("benchmark", "routing", "convert", "costs"))


def test_topk_report_has_the_table5_columns(tmp_path):
    def run_figures(k):  # what a worker and the inference phase record for one model
        return {"map50": 0.5 + k / 100, "map50_95": 0.3, "precision": 0.6, "recall": 0.4 + k / 100, "f1": 0.5,
                "params_M": 10.7, "gflops": 35 + k / 10, "epoch_s": 60.0, "step_ms": 900.0, "peak_mem_mb": 2000.0,
                "eager_ms": 600.0 + k, "ort_ms": 300.0 + k}

    report = {"settings": {"argv": ["benchmark", "--topk"], "data": "aluminum.yaml", "split": "test", "device": "CPU",
                           "date": "today", "latency_imgsz": 640, "reps": 3, "train": {"epochs": 1}},
              "models": {f"dsmoe-k{k}-n": run_figures(k) for k in (1, 5, 32)}, "targets": {},
              "topk": {1: "dsmoe-k1-n", 5: "dsmoe-k5-n", 32: "dsmoe-k32-n"}}
    table = benchmark.markdown(report).split("## Top-k sweep")[1]
    assert "| 1 | 0.510 | 601.0 | 301.0 | 35.10 | 0.410 | 0.500 |" in table
    assert table.index("| 5 |") < table.index("| 32 |")
    benchmark.plot(report, tmp_path / "topk.png")
    assert (tmp_path / "topk.png").stat().st_size > 0


def test_a_call_keeps_the_folders_earlier_rows_apart_with_the_call_that_measured_them(tmp_path, capsys):
    row = {"map50": 0.6, "map50_95": 0.3, "gflops": 28.4, "ort_ms": 150.0}
    old = {"settings": {"argv": ["benchmark", "--models", "yolov8s.yaml", "dsmoe-n.yaml"], "date": "2026-12-01"},
           "models": {"yolov8s": row, "dsmoe-n": {**row, "map50_95": 0.2}},
           "earlier": {"yolo26s": {**row, "call": {"argv": ["benchmark", "--models", "yolo26s.yaml"],
                                                   "date": "2026-11-30"}}}}
    previous = tmp_path / "results.json"
    assert benchmark.earlier_runs(previous, {}) == {}  # a new folder
    previous.write_text(json.dumps(old))
    earlier = benchmark.earlier_runs(previous, {"dsmoe-n": row})  # this call reran dsmoe-n only
    assert list(earlier) == ["yolo26s", "yolov8s"]  # the rows it did not rerun, none of those it did
    assert earlier["yolov8s"]["call"] == {"argv": old["settings"]["argv"], "date": "2026-12-01"}
    assert earlier["yolo26s"]["call"]["date"] == "2026-11-30"  # carried over with the call that measured it
    report = {"settings": {"argv": ["benchmark", "--models", "dsmoe-n.yaml"], "data": "d.yaml", "split": "test",
                           "device": "CPU", "date": "2026-12-02", "latency_imgsz": 640, "reps": 3, "train": {}},
              "models": {}, "targets": {}, "topk": {}, "earlier": earlier}
    table = benchmark.markdown(report).split("## Earlier runs")[1]
    command = "`dsmoe benchmark --models yolov8s.yaml dsmoe-n.yaml` (2026-12-01)"
    assert f"| yolov8s | 0.600 | 0.300 | 28.4 | 150.0 | {command} |" in table
    previous.write_text("{not json")
    assert benchmark.earlier_runs(previous, {}) == {} and "not a readable benchmark report" in capsys.readouterr().err


def test_an_interrupted_benchmark_reuses_finished_runs_only(tmp_path, monkeypatch):
    best = tmp_path / "best.pt"
    best.write_bytes(b"weights")
    spec = {"model": "yolov8n.yaml", "name": "yolov8n", "project": str(tmp_path), "train": {"epochs": 3}}
    done = {"best": str(best), "map50": 0.5, "peak_mem_mb": 900.0, "spec": spec}
    (tmp_path / "yolov8n.result.json").write_text(json.dumps(done))
    started = []

    def popen(*args, **kwargs):
        started.append(args)
        raise RuntimeError("would train")

    monkeypatch.setattr(benchmark.subprocess, "Popen", popen)
    assert benchmark.run_worker(spec, tmp_path) == {k: v for k, v in done.items() if k != "spec"} and not started
    with pytest.raises(RuntimeError, match="would train"):  # another setting: trained again, never reused
        benchmark.run_worker({**spec, "train": {"epochs": 4}}, tmp_path)
    assert started and not (tmp_path / "yolov8n.result.json").exists()


def test_a_run_is_trained_again_when_its_model_file_or_source_checkpoint_changes(dataset, tmp_path, monkeypatch):
    from ultralytics.utils import ROOT

    model = tmp_path / "mine.yaml"
    config = (ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text()
    seen = []
    for text in (config, config, config.replace("[-1, 3, C2f, [128, True]]", "[-1, 2, C2f, [128, True]]")):
        model.write_text(text)  # the same path each time: the third call edits the architecture
        seen.append(first_spec(monkeypatch, ["--data", str(dataset / "set" / "data.yaml"), "--models", str(model),
                                             "--out", str(tmp_path / "b")]))
    assert seen[0] == seen[1]  # the same config: the finished run would be reused
    assert {**seen[2], "sha256": None} == {**seen[0], "sha256": None} and seen[2]["sha256"] != seen[0]["sha256"]
    base = tmp_path / "base.pt"
    base.write_bytes(b"base weights")
    before = benchmark.file_digests(str(base), True)  # a bool (pretrained) is not a file: skipped
    base.write_bytes(b"retrained base")  # a source checkpoint retrained at the same path: another spec
    assert list(before) == [str(base)] and benchmark.file_digests(str(base), True) != before


def test_a_stopped_benchmark_stops_its_training_worker(tmp_path):
    """SIGTERM to `dsmoe benchmark` (kill, a scheduler) ends the worker process that trains, not only the parent."""
    script = tmp_path / "bench.py"
    script.write_text(
        "import subprocess, sys\n"
        "from ultralytics_dsmoe import benchmark\n"
        "real = subprocess.Popen\n"
        "def popen(args, **kwargs):\n"
        "    proc = real([sys.executable, '-c', 'import time; time.sleep(120)'], **kwargs)\n"
        "    print(proc.pid, flush=True)\n"
        "    return proc\n"
        "benchmark.subprocess.Popen = popen\n"
        f"benchmark.run_worker({{'model': 'm.yaml', 'name': 'm', 'project': {str(tmp_path)!r}}}, "
        f"__import__('pathlib').Path({str(tmp_path)!r}))\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(0.5)  # the parent is now waiting on the worker
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # terminated and reaped by the parent before it exited
        os.kill(worker, 0)
    if sys.platform == "linux":  # SIGKILL, which no handler sees: the kernel ends the worker (PR_SET_PDEATHSIG)
        parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        worker = int(parent.stdout.readline())
        time.sleep(0.5)
        parent.kill()
        parent.wait(timeout=60)
        assert wait_for(lambda: not alive(worker), 30), f"worker {worker} still runs after its benchmark was killed"


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_run_worker_restores_the_sigterm_handler(tmp_path, monkeypatch):
    """The SIGTERM handler is run_worker's only while a worker trains: callers in-process keep their own."""
    real_popen = subprocess.Popen

    def fake_worker(args, **kwargs):  # a training that succeeds at once
        Path(args[-1]).write_text(json.dumps({"best": "b.pt", "peak_mem_mb": 1.0}))
        return real_popen([sys.executable, "-c", "pass"], **kwargs)

    monkeypatch.setattr(benchmark.subprocess, "Popen", fake_worker)
    before = signal.getsignal(signal.SIGTERM)
    assert benchmark.run_worker({"model": "m.yaml", "name": "m", "project": str(tmp_path)}, tmp_path)["best"] == "b.pt"
    assert signal.getsignal(signal.SIGTERM) is before


def test_benchmark_checks_everything_before_training(dataset, tmp_path, monkeypatch):
    """Missing onnxruntime, a bad device, a missing checkpoint, weights or a text model that cannot be fetched
    offline: all reported at once, before any model is trained."""
    import builtins

    from ultralytics_dsmoe.text import encoders

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime' (simulated)")
        return real_import(name, *args, **kwargs)

    text = tmp_path / "dsmoe-text.yaml"
    text.write_text((REPO / "cfg" / "dsmoe.yaml").read_text() + "\ntext_model: nobody/an-uncached-llm\n")
    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    monkeypatch.setattr(encoders, "offline", lambda: True)
    monkeypatch.setattr(benchmark, "run_worker", lambda *a: pytest.fail("trained before checking"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        benchmark.main(["--data", str(dataset / "set" / "data.yaml"), "--models", "yolov8n.yaml", "missing.pt",
                        str(text), "--pretrained", "--device", "7", "--out", str(tmp_path / "bench")])
    message = str(e.value)
    assert "nothing was trained" in message and "pip install onnxruntime" in message
    assert "device '7'" in message and "missing.pt: no such checkpoint" in message
    assert "yolov8n.yaml: --pretrained needs yolov8n.pt" in message and "mobile_sam.pt" in message
    assert "text_model 'nobody/an-uncached-llm' is not cached" in message


def test_routing_says_what_does_not_fit_instead_of_a_traceback(dataset, tmp_path, capsys):
    from ultralytics_dsmoe import cli

    model = YOLO("dsmoe-n.yaml")
    model.model.names = {i: f"c{i}" for i in range(len(model.model.names))}  # trained on other classes
    model.save(tmp_path / "m.pt")
    data = str(dataset / "set" / "data.yaml")
    for args, message in ((["--model", str(tmp_path / "missing.pt")], "no checkpoint"),
                          (["--model", str(tmp_path / "m.pt"), "--split", "test"], "has no 'test' split; it has ['train', 'val']"),
                          (["--model", str(tmp_path / "m.pt")], "m.pt was trained on ['c0',")):
        assert cli.main(["routing", "--data", data, "--imgsz", "64", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("dsmoe routing: ") and message in err and "Traceback" not in err


def test_unit_classes_puts_each_box_centre_in_the_region_sparsemoe_routes():
    from ultralytics_dsmoe.routing import unit_classes

    batch = {"img": torch.zeros(2, 3, 64, 64), "batch_idx": torch.tensor([0.0, 0, 1, 1]),
             "cls": torch.tensor([[0.0], [1], [2], [0]]),  # (x, y) centres, normalised on the letterboxed image
             "bboxes": torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.9, 0.2, 0.1, 0.1], [0.3, 0.8, 0.1, 0.1],
                                     [0.55, 0.55, 0.1, 0.1]])}

    def held(present):  # unit -> classes with a centre in it (3: none, the background column)
        return {u: row.nonzero().flatten().tolist() for u, row in enumerate(present)}

    # a 4 x 4 map in 2 x 2 regions: unit = image * 4 + row * 2 + col
    assert held(unit_classes(batch, 3, 2, (4, 4))) == {0: [0], 1: [1], 2: [3], 3: [3], 4: [3], 5: [3], 6: [2], 7: [0]}
    # a 5 x 5 map is padded to 6 x 6, so a region is 3 cells and the split lies at 3/5: centre 0.55 is in row 0
    assert held(unit_classes(batch, 3, 2, (5, 5))) == {0: [0], 1: [1], 2: [3], 3: [3], 4: [0], 5: [3], 6: [2], 7: [3]}
    assert held(unit_classes(batch, 3, 1, (4, 4))) == {0: [0, 1], 1: [0, 2]}  # per image


def test_class_expert_nmi_is_one_for_private_experts_and_zero_for_shared_ones():
    from ultralytics_dsmoe.routing import nmi

    assert nmi(torch.tensor([[5.0, 0, 0], [0, 3, 0], [0, 0, 7]])) == pytest.approx(1.0)
    assert nmi(torch.tensor([[2.0, 4, 6], [1, 2, 3]])) == pytest.approx(0.0, abs=1e-6)  # independent: P(c, e) = P(c) P(e)
    assert 0 < nmi(torch.tensor([[4.0, 1], [1, 4]])) < 1


def test_chance_nmi_is_what_class_blind_routing_scores_on_a_finite_split():
    """61 units, 4 classes, k = 5 of 32 experts: routing drawn independently of the class still scores NMI > 0, at
    its chance level; routing that gives each class its own 5 experts scores far above it."""
    from ultralytics_dsmoe.routing import chance_nmi, nmi

    g = torch.Generator().manual_seed(0)
    cls = torch.randint(0, 4, (61,), generator=g)
    present = F.one_hot(cls, 4).float()  # (U, classes)
    blind = torch.stack([F.one_hot(torch.randperm(32, generator=g)[:5], 32).sum(0) for _ in cls]).float()  # (U, Ne)
    private = torch.stack([F.one_hot(torch.arange(5) + 5 * c, 32).sum(0) for c in cls]).float()
    assert 0.01 < nmi(present.T @ blind) < 2 * chance_nmi(present, blind)
    assert chance_nmi(present, private) < 0.1 and nmi(present.T @ private) > 0.5
    assert chance_nmi(present, blind) == chance_nmi(present, blind)  # seeded: a report is reproducible


def test_reports_name_the_cpu_model(monkeypatch):
    """Latency ratios differ between CPUs (dsmoe-n against yolov8s: 1.18x on one 2-core machine, 0.87x on an AMD
    EPYC; 1.04-1.07x and 1.07-1.17x on two hosts that both call themselves "AMD EPYC"), so reports name the model
    with its family and vector extension, from /proc/cpuinfo, else from ``platform``."""
    import builtins
    import platform

    from ultralytics_dsmoe.util import cpu_name

    name = cpu_name()
    assert name and name == name.strip()
    cpuinfo = ("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 23\nmodel\t\t: 49\nflags\t\t: fpu avx avx2\n\n"
               "processor\t: 1\n")
    monkeypatch.setattr(builtins, "open", lambda *a, **k: io.StringIO(cpuinfo))
    assert cpu_name() == "AMD EPYC, family 23 model 49, AVX2"  # the generic name plus what tells hosts apart
    monkeypatch.setattr(builtins, "open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    assert cpu_name() == (platform.processor() or platform.machine())


def test_one_verdict_rule_for_benchmark_and_costs():
    """A latency target is met only when the whole spread is within the limit, missed when none of it is."""
    from ultralytics_dsmoe.benchmark import ratio_verdict

    assert ratio_verdict(0.87, 0.72, 1.23, 1.0)["met"] is None  # the AMD EPYC run: median under, spread across
    assert ratio_verdict(0.9, 0.85, 0.95, 1.0)["met"] is True and ratio_verdict(1.2, 1.1, 1.3, 1.0)["met"] is False
    assert ratio_verdict(0.16, 0.16, 0.16, 0.25) == {"value": 0.16, "range": [0.16, 0.16], "limit": 0.25, "met": True}


def test_timing_verdict_spans_best_and_worst_case():
    """Two timings over interleaved rounds: the ratio's range is a's min over b's max to a's max over b's min."""
    from ultralytics_dsmoe.benchmark import ort_timing, timing_verdict

    a, b = {"median": 161, "min": 158, "max": 178}, {"median": 151, "min": 148, "max": 222}  # the EPYC costs run
    v = timing_verdict(a, b, 1.0)
    assert v["value"] == pytest.approx(161 / 151) and v["range"] == pytest.approx([158 / 222, 178 / 148])
    assert v["met"] is None
    assert ort_timing({"ort_ms": 90.0}) == {"median": 90.0, "min": 90.0, "max": 90.0}  # a report without the spread
    assert timing_verdict(ort_timing({"ort_ms": 90.0}), ort_timing({"ort_ms": 100.0}), 1.0)["met"] is True
