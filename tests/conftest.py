"""Test isolation: Ultralytics settings, weights and runs live in a throwaway folder, never in the user's home."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="dsmoe-tests-"))
os.environ["YOLO_CONFIG_DIR"] = str(_HOME / "config")  # read once when ultralytics is imported
os.environ.setdefault("YOLO_OFFLINE", "1")  # the suite never uses the network (tests that simulate one set their own)
# Ultralytics' default datasets, weights and runs folders sit in and beside the git checkout: point the throwaway
# settings at throwaway folders before any Ultralytics import reads them (DATASETS_DIR and WEIGHTS_DIR bind at import).
FOLDERS = {key: str(_HOME / key.split("_")[0]) for key in ("datasets_dir", "weights_dir", "runs_dir")}
subprocess.run([sys.executable, "-c", f"from ultralytics.utils import SETTINGS; SETTINGS.update({FOLDERS!r})"],
               env={**os.environ, "ULTRALYTICS_DSMOE_AUTOLOAD": "0"}, check=True, capture_output=True)
REPO = Path(__file__).resolve().parents[1]
if os.environ.get("DSMOE_TEST_TEXT_CACHE"):  # the GPU machine has no text model: prompt embeddings come precomputed
    import shutil

    from ultralytics_dsmoe.text.cache import cache_dir

    shutil.copytree(os.environ["DSMOE_TEST_TEXT_CACHE"], cache_dir(), dirs_exist_ok=True)


@pytest.fixture(scope="session")
def home() -> Path:
    return _HOME


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 900):
    """Run a command in a fresh process of this environment (site hooks included), env as given."""
    import subprocess

    return subprocess.run(cmd, cwd=cwd, env=os.environ if env is None else env, capture_output=True, text=True,
                          timeout=timeout)


INTERRUPTED_TRAINING = """
from ultralytics import YOLO
model = YOLO({model!r})
def stop(trainer):
    if trainer.epoch == 0:
        raise KeyboardInterrupt("simulated crash after epoch 1")
model.add_callback("on_fit_epoch_end", stop)
try:
    model.train(data={data!r}, epochs=2, imgsz=64, batch=4, workers=0, plots=False, project={project!r}, name={name!r},
                exist_ok=True)
except KeyboardInterrupt:
    print("interrupted")
"""


def interrupted_training(model, data, project, name) -> str:
    """Python source that trains ``model`` for 2 epochs at 64 px and crashes it after epoch 1, printing 'interrupted'
    (the run's last.pt is then a resumable checkpoint)."""
    return INTERRUPTED_TRAINING.format(model=str(model), data=str(data), project=str(project), name=name)


def run_python(code: str, cwd: Path, env: dict | None = None):
    """Run ``python -c code`` in a fresh interpreter of this environment."""
    return run([sys.executable, "-c", code], cwd, env)


GLOO_LAUNCHER = r'''
import os, sys


def _rank(rank, port, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    import torch.distributed as dist  # environment first: Ultralytics reads RANK when it is imported

    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        work(rank, *args)
    finally:
        dist.destroy_process_group()


{body}

if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(sys.argv[1], sys.argv[2:]), nprocs=2)
'''


def run_on_two_gloo_ranks(folder: Path, body: str, *args: str):
    """Run ``work(rank, *args)`` (defined in ``body``) in two fresh processes joined by a CPU (gloo) process group."""
    import socket

    with socket.socket() as s:  # a free port, so concurrent test runs do not collide
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = folder / "two_ranks.py"
    script.write_text(GLOO_LAUNCHER.replace("{body}", body))
    return run([sys.executable, str(script), port, *map(str, args)], REPO)


def two_box_batch():
    """A minimal detection batch: two random 64x64 images with one box each (classes 0 and 1)."""
    import torch

    return {
        "img": torch.rand(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.5]]),
    }
