"""Every command line in the README runs, as written but at tiny scale, offline, in README order.

The README's commands are collected from its ``bash`` blocks (``&&`` chains split, comments dropped) and its inline
``yolo ...``/``dsmoe ...``/``python ...`` spans that carry arguments. Each one is either run here or listed in SKIPPED
with the reason and the test that covers it instead, so a command added to the README without coverage fails
``test_every_readme_command_is_run_or_accounted_for``.

Tiny scale rewrites only sizes and places, never flags: epochs 1, imgsz 64, batch 4, CPU, a generated 4-class set for
data the machine does not have (aluminum.yaml, path/to/data.yaml, ...), and the run folders of this test for the
README's ``runs/detect/train/weights/best.pt``, ``best.onnx`` and ``images/``. ``yolo`` lines run through Ultralytics'
own CLI entry point and ``dsmoe`` lines through the plugin's, in this process (test_cli.py runs the console scripts
in fresh interpreters).
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import sys

import pytest
from conftest import REPO
from ultralytics.cfg import entrypoint

from ultralytics_dsmoe import cli
from ultralytics_dsmoe.data.synthetic import generate

README = (REPO / "README.md").read_text()
MISSING_DATA = {"aluminum.yaml", "neu-det.yaml", "path/to/data.yaml", "your.yaml", "..."}  # not on a test machine
SIZES = {"epochs": "1", "imgsz": "64", "batch": "4"}
RUNS = ("yolo ", "dsmoe ", "python -m ultralytics_dsmoe.costs")  # the command kinds `tiny` knows how to shrink
SKIPPED = {
    'python3 -m venv .venv': "the install; CI runs it",
    '.venv/bin/pip install -e ".[test]"': "the install; CI runs it (with -q)",
    '.venv/bin/pip install -q -e ".[test]"': "the install; CI runs it",
    ".venv/bin/pytest -q": "the test command itself; test_readme.py checks CI runs it verbatim",
    "yolo train model=dsmoe-n.yaml data=aluminum.yaml cfg=paper-recipe.yaml":
        "test_cli.py::test_readme_paper_recipe_cli_line runs it through the console script in a fresh interpreter",
    "yolo train model=dsmoe-n.yaml data=deeppcb.yaml": "downloads DeepPCB; test_datasets.py mocks that download",
    "yolo train model=dsmoe-s.yaml data=... device=0,1": "needs two GPUs; test_ddp.py runs the DDP path on CPU",
    'python -m ultralytics_dsmoe.text.generate --data aluminum.yaml --surface "aluminum foil" --out prompts.yaml':
        "needs a causal LLM; test_text.py runs the generator on a tiny Qwen",
    "python benchmarks/first_command.py": "the README's measurement (3 seeds x 2 models x 30 epochs, ~17 min)",
    "yolo train model=...": "a placeholder in prose (the variants table lists the model yamls; test_configs.py builds each)",
    "dsmoe benchmark --data aluminum.yaml --finetune-from runs/detect/line/weights/best.pt --seeds 0 1 2 --epochs 30":
        "trains 21 runs; test_upgrade.py::test_finetune_benchmark_reports_paired_gains_and_gates runs it with "
        "--variants full --seeds 0 1 at tiny scale",
    "yolo train model=dsmoe-v8s.yaml data=... pretrained=yolov8s.pt":
        "needs yolov8s.pt; test_upgrade.py::test_pretrained_yolo_weights_transfer_by_structure_into_an_upgrade_config",
}


def readme_commands(text: str = README) -> list[str]:
    """The README's command lines, in order."""
    commands = []
    for block in re.findall(r"```bash\n(.+?)\n```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            commands += [c.strip() for c in line.split("&&") if c.strip()]
    prose = re.sub(r"```.+?```", "", text, flags=re.S)
    for span in re.findall(r"`((?:yolo|dsmoe|python) [^`]+)`", prose):
        if "=" in span or " --" in span or span.startswith("python ") or span == "yolo settings":
            commands.append(span)
    return list(dict.fromkeys(commands))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny 4-class set (8 train, 4 val images at 64 px), a folder of images to predict on, a trained yolov8n (the
    model to upgrade) and the folders the README's relative paths point to."""
    root = tmp_path_factory.mktemp("docs")
    data = generate(root / "set", seed=3, train=8, val=4, imgsz=64)
    (root / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\n"
                                    "names: {0: pinhole, 1: scratch, 2: stain, 3: crease}\n")
    shutil.copytree(data / "images" / "val", root / "images")
    from ultralytics import YOLO  # the YOLO model "on the line" that the README's `dsmoe upgrade` starts from

    YOLO("yolov8n.yaml").train(data=str(root / "data.yaml"), epochs=1, imgsz=64, batch=4, workers=0, plots=False,
                               project=str(root / "runs" / "detect"), name="line", exist_ok=True, verbose=False)
    from test_datasets import pku_release  # the real PKU-Market-PCB layout, stray folders included

    release = pku_release(root / "release")
    shutil.make_archive(str(root / "PCB_DATASET"), "zip", release.parent, release.name)
    return root


def tiny(command: str, root) -> list[str]:
    """The command's words with the sizes and places of this test."""
    words = shlex.split(command.replace("~/Downloads/", f"{root}/"))
    best = root / "runs" / "detect" / "train" / "weights" / "best.pt"
    places = {"runs/detect/train/weights/best.pt": str(best), "best.onnx": str(best.with_suffix(".onnx")),
              "images/": str(root / "images"), **{d: str(root / "data.yaml") for d in MISSING_DATA}}
    if words[:2] == ["yolo", "settings"]:
        return words
    if words[0] == "yolo":
        kv = dict(w.split("=", 1) for w in words[2:])
        kv = {k: places.get(v, v) for k, v in kv.items()}
        kv.update({k: v for k, v in SIZES.items() if k in kv or words[1] == "train"})
        kv.update({"imgsz": "64", "device": "cpu", "workers": "0", "project": str(root / "runs" / "detect")})
        if words[1] == "export":
            kv = {k: v for k, v in kv.items() if k in {"model", "format", "dynamic", "imgsz"}}
        return words[:2] + [f"{k}={v}" for k, v in kv.items()]
    words = [places.get(w, w) for w in words]
    options = {"--epochs": "1", "--imgsz": "64", "--device": "cpu", "--batch": "4"}
    words = [options.get(prev, w) if prev in options else w for prev, w in zip([""] + words, words)]
    if words[:2] == ["dsmoe", "benchmark"]:
        words = [*words, "--imgsz", "64", "--epochs", "1", "--batch", "4", "--workers", "0", "--latency-imgsz", "64",
                 "--reps", "1", "--threads", "1", "--out", str(root / f"bench{len(list(root.glob('bench*')))}")]
        words = words if "--topk" not in words else [*words, "--topk", "2"]  # the sweep, one point of it
        words = words if "--models" in words or "--topk" in words else [*words, "--models", "dsmoe-n.yaml"]
    if words[:2] == ["dsmoe", "convert"]:  # an alternative to the converting `yolo train` line before it
        words = [*words, "--out", str(root / "converted")]
    if words[:2] == ["dsmoe", "routing"]:
        words = [*words, "--imgsz", "64", "--batch", "4", "--out", str(root / "routing")]
    if words[:3] == ["python", "-m", "ultralytics_dsmoe.costs"]:
        words = [*words, "--imgsz", "64", "--reps", "1", "--threads", "1", "--out", str(root / "costs")]
    return words


def run(words: list[str]) -> None:
    if words[0] == "yolo":
        entrypoint(" ".join(["yolo", *words[1:]]))
    elif words[0] == "dsmoe":
        cli.main(words[1:])
    else:  # python -m <module> ...
        importlib.import_module(words[2]).main(words[3:])


def test_every_readme_command_is_run_or_accounted_for():
    commands = readme_commands()
    assert "yolo train model=dsmoe-n.yaml data=synthetic-defects.yaml epochs=24 imgsz=160 batch=16" in [
        c.replace(".venv/bin/", "") for c in commands]  # the first screen's main job is among them
    unknown = [c for c in commands if c not in SKIPPED and not c.replace(".venv/bin/", "").startswith(RUNS)]
    assert not unknown, f"README commands neither run nor skipped: {unknown}"
    assert not set(SKIPPED) - set(commands), f"SKIPPED names commands the README no longer has: {set(SKIPPED) - set(commands)}"


def test_every_readme_command_runs(workspace, monkeypatch):
    """In README order, so the checkpoint the first `yolo train` writes is the one later lines use."""
    root = workspace
    monkeypatch.chdir(root)  # PCB_DATASET.zip is found in the working directory, as a user would have it
    done = []
    for command in readme_commands():
        if command in SKIPPED:
            continue
        words = tiny(command.replace(".venv/bin/", ""), root)
        try:
            run(words)
        except SystemExit as e:  # argparse and Ultralytics' CLI exit on bad arguments
            if e.code:
                pytest.fail(f"README command failed: {command}\n  ran as: {shlex.join(words)}\n  exit {e.code}")
        except Exception as e:
            raise AssertionError(f"README command failed: {command}\n  ran as: {shlex.join(words)}") from e
        done.append(command)
    best = root / "runs" / "detect" / "train" / "weights" / "best.pt"
    assert best.is_file() and best.with_suffix(".onnx").is_file()
    assert (root / "routing" / "routing.json").is_file() and len(list(root.glob("bench*/results.json"))) == 2
    assert (root / "costs" / "costs.json").is_file() and (root / "converted" / "images" / "train").is_dir()
    topk = json.loads(next(f for f in root.glob("bench*/results.json") if json.loads(f.read_text())["topk"]).read_text())
    assert list(topk["topk"]) == ["2"]
    assert len(done) >= 12, done
    assert "ultralytics_dsmoe" in sys.modules


def test_readme_python_blocks_run(workspace, monkeypatch):
    """The README's Python snippets, with this test's data, sizes and run folder."""
    blocks = re.findall(r"```python\n(.+?)\n```", README, re.S)
    assert blocks
    monkeypatch.chdir(workspace)
    for code in blocks:
        code = code.replace('"path/to/data.yaml"', repr(str(workspace / "data.yaml")))
        code = re.sub(r"epochs=\d+", "epochs=1", re.sub(r"imgsz=\d+", "imgsz=64", code))
        code = code.replace(".train(", f".train(project={str(workspace / 'py')!r}, workers=0, batch=4, ")
        exec(compile(code, "README.md", "exec"), {})
    assert (workspace / "py" / "train" / "weights" / "best.pt").is_file()
