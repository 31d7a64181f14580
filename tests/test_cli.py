"""End to end through real entry points in fresh interpreters: autoload, `yolo train`, the DDP worker, offline."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import interrupted_training, run, run_python
from ultralytics_dsmoe.data.synthetic import generate

YOLO = Path(sys.executable).with_name("yolo")
NETWORK_EVENTS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.connect",
                  "socket.sendto", "urllib.Request")
# The child interpreters' sitecustomize: an audit hook logs every real network attempt, and DSMOE_TEST_NETWORK
# simulates the machine's network at the resolver: "down" (lookups fail at once), "hang" (lookups never return),
# "up" (every name resolves) or "real" (the real resolver). Simulated lookups are logged as "lookup <host>".
SITECUSTOMIZE = """
import os, socket, sys, threading

def _log(line):
    with open(LOG, "a") as f:
        f.write(line + "\\n")

def _audit(event, args):
    if event in EVENTS:
        if event == "socket.connect" and not isinstance(args[1], tuple):
            return  # AF_UNIX: local IPC, not network
        _log(f"{event} {args[1:]!r}")

def _getaddrinfo(host, port, *args, **kwargs):
    host = host.decode() if isinstance(host, bytes) else host
    _log(f"lookup {host}")
    if NETWORK == "hang":
        threading.Event().wait()
    if NETWORK == "up":
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port or 0))]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (simulated)")

NETWORK = os.environ.get("DSMOE_TEST_NETWORK", "down")
if NETWORK != "real":
    socket.getaddrinfo = _getaddrinfo
sys.addaudithook(_audit)
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A fresh user: own Ultralytics config dir, a tiny generated dataset, an unrelated working directory, and a
    sitecustomize that logs every network attempt of the child interpreters and simulates a machine without
    network (``DSMOE_TEST_NETWORK`` changes that)."""
    root = tmp_path_factory.mktemp("sandbox")
    data = generate(root / "data", seed=1, train=8, val=4, imgsz=64)
    # Messy factory data: a truncated image and a label file with a malformed row must be warned about and skipped.
    (data / "images" / "train" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    (data / "labels" / "train" / "corrupt.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    bad_label = sorted(f for f in (data / "labels" / "train").glob("*.txt") if f.stem != "corrupt")[0]
    bad_label.write_text(bad_label.read_text() + "3 0.5 oops 0.1\n")
    (root / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\n"
                                    "names: {0: pinhole, 1: scratch, 2: stain, 3: crease}\ngamma: 1.5\n")
    (root / "site").mkdir()
    log = root / "network.log"
    (root / "site" / "sitecustomize.py").write_text(f"EVENTS = {NETWORK_EVENTS!r}\nLOG = {str(log)!r}\n" + SITECUSTOMIZE)
    (root / "work").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "ULTRALYTICS_DSMOE", "DSMOE_TEST"))}
    env.update(YOLO_CONFIG_DIR=str(root / "config"), PYTHONPATH=str(root / "site"))
    return root, env, log


def test_plain_python_does_not_load_plugin(sandbox):
    root, env, _ = sandbox
    r = run_python("import sys, json; print(json.dumps(sorted(m for m in sys.modules "
                   "if m.split('.')[0] in ('torch', 'ultralytics', 'ultralytics_dsmoe', 'ultralytics_dsmoe_hook'))))",
                   root / "work", env)
    assert json.loads(r.stdout) == ["ultralytics_dsmoe_hook"], r.stderr


@pytest.mark.parametrize("autoload", ["1", "0"])
def test_autoload_and_opt_out(sandbox, autoload):
    root, env, _ = sandbox
    r = run_python("import os, sys; import ultralytics.nn.tasks as t; print(hasattr(t, 'MobileSAMEncoder'), "
                   "'ultralytics_dsmoe' in sys.modules, os.environ.get('YOLO_OFFLINE'))",
                   root / "work", {**env, "ULTRALYTICS_DSMOE_AUTOLOAD": autoload})
    expected = ["True", "True", "1"] if autoload == "1" else ["False", "False", "None"]
    assert r.stdout.splitlines()[-1].split() == expected, r.stderr


def test_user_offline_choice_is_kept(sandbox):
    root, env, _ = sandbox
    r = run_python("import os, ultralytics; print(os.environ['YOLO_OFFLINE'])", root / "work",
                   {**env, "YOLO_OFFLINE": "0"})
    assert r.stdout.splitlines()[-1] == "0", r.stderr


PROBED = {"lookup one.one.one.one", "lookup dns.google"}  # the hosts of Ultralytics' (and the hook's) probe
HOST_STATE = ("import json, os, ultralytics.utils as u; from ultralytics.utils import checks; "
              "print(json.dumps([os.environ.get('YOLO_OFFLINE'), u.ONLINE, checks.AUTOINSTALL, dict(u.SETTINGS)], "
              "default=str))")


def test_without_network_offline_is_set_without_a_stall(sandbox):
    """A machine whose resolver never answers: Ultralytics' own probe would wait for it at every import; the hook
    gives up after its bounded probe, sets YOLO_OFFLINE=1, and nothing else is asked of the network."""
    root, env, log = sandbox
    log.unlink(missing_ok=True)
    r = run_python(HOST_STATE, root / "work", {**env, "DSMOE_TEST_NETWORK": "hang"})
    assert r.returncode == 0, r.stderr[-2000:]
    offline, online, *_ = json.loads(r.stdout.splitlines()[-1])
    assert (offline, online) == ("1", False)
    assert set(log.read_text().splitlines()) <= PROBED


def test_with_network_ultralytics_is_untouched(sandbox):
    """On a machine with network the plugin changes nothing Ultralytics decides at import: YOLO_OFFLINE stays
    unset, Ultralytics is online, pip auto-install and the settings are what they are without the plugin."""
    root, env, _ = sandbox
    online = {**env, "DSMOE_TEST_NETWORK": "up"}
    states = [run_python(HOST_STATE, root / "work", {**online, "ULTRALYTICS_DSMOE_AUTOLOAD": a}) for a in ("1", "0")]
    assert all(r.returncode == 0 for r in states), states[0].stderr[-2000:]
    with_plugin, without = (json.loads(r.stdout.splitlines()[-1]) for r in states)
    assert with_plugin == without
    assert with_plugin[:2] == [None, True]


def bad_label_stem(root):
    labels = root / "data" / "labels" / "train"
    return next(f.stem for f in sorted(labels.glob("*.txt")) if "oops" in f.read_text() and f.stem != "corrupt")


def test_yolo_cli_train_offline(sandbox):
    """`yolo train model=dsmoe-n.yaml` on a machine without network, from an unrelated folder: 1 epoch at imgsz 64;
    after the hook's failed probe, no network attempt at all."""
    root, env, log = sandbox
    log.unlink(missing_ok=True)
    r = run([str(YOLO), "train", "model=dsmoe-n.yaml", f"data={root / 'data.yaml'}", "epochs=1", "imgsz=64",
              "batch=4", "workers=0", f"project={root / 'runs'}", "name=cli", "exist_ok=True"], root / "work", env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    run_dir = root / "runs" / "cli"
    assert (run_dir / "weights" / "best.pt").is_file()
    with open(run_dir / "results.csv") as f:
        header = [h.strip() for h in next(csv.reader(f))]
    assert {"train/box_loss", "train/cls_loss", "train/dfl_loss", "val/cls_loss"} <= set(header)
    assert {f"{s}/{k}" for s in ("train", "val") for k in ("moe_loss", "align_loss")} <= set(header)
    assert "Assuming scale" not in out
    assert "using the embedded offline encoder all-MiniLM-L6-v2" in out  # text_model=auto says what it used
    assert "corrupt.png" in out and "ignoring corrupt image/label" in out  # bad files: warned about and skipped
    assert f"{bad_label_stem(root)}.png: ignoring corrupt image/label" in out
    attempts = set(log.read_text().splitlines()) - PROBED if log.exists() else set()
    assert not attempts, f"network attempts:\n{attempts}"
    # best.pt carries the prompts, encoder id and embeddings (loading it needs no text model) and the data's gamma
    code = ("import sys; from ultralytics import YOLO; from ultralytics_dsmoe.nn import ClassText; "
            f"m = YOLO({str(run_dir / 'weights' / 'best.pt')!r}).model; "
            "t = next(x for x in m.modules() if isinstance(x, ClassText)); "
            "print(t.text_source['encoder'], t.text_source['names'], 'transformers' in sys.modules, m.yaml['gamma'])")
    r = run_python(code, root / "work", env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "all-MiniLM-L6-v2|mean|l2 ['pinhole', 'scratch', 'stain', 'crease'] False 1.5"


def test_readme_paper_recipe_cli_line(sandbox):
    """The README's `yolo train model=dsmoe-n.yaml data=... cfg=paper-recipe.yaml` from an unrelated folder: the CLI
    reads `cfg=` before it loads a model, and the shipped recipe must resolve there too (1 epoch at imgsz 64)."""
    root, env, _ = sandbox
    r = run([str(YOLO), "train", "cfg=paper-recipe.yaml", "model=dsmoe-n.yaml", f"data={root / 'data.yaml'}",
             "epochs=1", "imgsz=64", "batch=4", "workers=0", f"project={root / 'runs'}", "name=recipe", "exist_ok=True"],
            root / "work", env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    args = (root / "runs" / "recipe" / "args.yaml").read_text()
    assert "optimizer: Adam" in args and "mixup: 0.5" in args and "cos_lr: true" in args and "seed: 42" in args


def test_ddp_worker_script_loads_plugin(sandbox):
    """The script Ultralytics generates for each DDP rank runs in a fresh interpreter and must find the plugin."""
    root, env, log = sandbox
    code = f"""
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.dist import generate_ddp_file
t = DetectionTrainer(overrides=dict(model="dsmoe-n.yaml", data={str(root / 'data.yaml')!r}, epochs=1, imgsz=64,
                     batch=4, workers=0, project={str(root / 'runs')!r}, name="ddp", exist_ok=True, plots=False))
t.model = t.get_model(cfg="dsmoe-n.yaml", verbose=False)
print(generate_ddp_file(t))
"""
    r = run_python(code, root / "work", env)
    assert r.returncode == 0, r.stderr[-3000:]
    script = r.stdout.strip().splitlines()[-1]
    r = run([sys.executable, script], root / "work", env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (root / "runs" / "ddp" / "weights" / "best.pt").is_file()


def test_network_audit_detects_attempts(sandbox):
    """The audit hook behind the offline tests is live: Ultralytics' own DNS probe shows up on the real resolver."""
    root, env, log = sandbox
    log.unlink(missing_ok=True)
    run_python("import ultralytics", root / "work", {**env, "YOLO_OFFLINE": "0", "DSMOE_TEST_NETWORK": "real"})
    assert "socket.getaddrinfo" in log.read_text()
    log.unlink()


def test_resume_continues_an_interrupted_run_with_the_same_loss_columns(sandbox):
    """A run stopped after epoch 1 of 2 resumes from last.pt: epoch 2 is trained, results.csv keeps its columns."""
    root, env, log = sandbox
    r = run_python(interrupted_training("dsmoe-n.yaml", root / "data.yaml", root / "runs", "resume"), root / "work", env)
    assert "interrupted" in r.stdout, (r.stdout + r.stderr)[-3000:]
    last = root / "runs" / "resume" / "weights" / "last.pt"
    r = run_python(f"from ultralytics import YOLO; YOLO({str(last)!r}).train(resume=True)", root / "work", env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "Resuming training" in r.stdout + r.stderr
    with open(root / "runs" / "resume" / "results.csv") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    assert [row[0].strip() for row in rows[1:]] == ["1", "2"]
    assert {"train/moe_loss", "train/align_loss", "val/moe_loss", "val/align_loss"} <= set(header)
    assert all(len(row) == len(header) for row in rows[1:])


def test_nan_epoch_is_recovered_from_last_pt(sandbox):
    """Ultralytics' NaN guard on a DS-MoE run: a NaN loss with NaN expert weights in epoch 2 of 3 reloads last.pt
    (model, EMA, optimizer), the epoch is redone, and the run ends with finite weights and its class texts intact."""
    root, env, log = sandbox
    code = f"""
import torch
from ultralytics import YOLO
from ultralytics_dsmoe.nn import ClassText, SparseMoE
model, seen = YOLO("dsmoe-n.yaml"), {{}}
def poison(trainer):
    net = trainer.model
    if trainer.epoch == 1 and "texts" not in seen:
        seen["texts"] = next(m for m in net.modules() if isinstance(m, ClassText)).embeddings.clone()
        next(m for m in net.modules() if isinstance(m, SparseMoE)).weight.data.fill_(float("nan"))
        trainer.loss = torch.tensor(float("nan"))
model.add_callback("on_train_epoch_end", poison)
model.train(data={str(root / 'data.yaml')!r}, epochs=3, imgsz=64, batch=4, workers=0, plots=False,
            project={str(root / 'runs')!r}, name="nan", exist_ok=True)
best = YOLO({str(root / 'runs' / 'nan' / 'weights' / 'best.pt')!r}).model
print("finite", all(torch.isfinite(p).all().item() for p in best.parameters()))
print("texts", torch.equal(next(m for m in best.modules() if isinstance(m, ClassText)).embeddings.float(),
                           seen["texts"].half().float()))
"""
    r = run_python(code, root / "work", env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Loss NaN/Inf detected (attempt 1/3), recovering from last.pt" in out
    assert "finite True" in r.stdout and "texts True" in r.stdout
    with open(root / "runs" / "nan" / "results.csv") as f:
        assert [row[0].strip() for row in list(csv.reader(f))[1:]] == ["1", "2", "3"]  # the bad epoch left no row
