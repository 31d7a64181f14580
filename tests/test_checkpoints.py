"""Checkpoints: save then load predicts identically, also under ULTRALYTICS_SAFE_LOAD=1 (weights-only unpickling)."""

import os
import pickle

import pytest

import torch

from conftest import REPO, run_python
from ultralytics import YOLO


def test_save_load_round_trip_and_safe_load(tmp_path):
    torch.manual_seed(0)
    model = YOLO("dsmoe-n.yaml")
    net = model.model.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 64, 64))  # BatchNorm statistics, so outputs depend on the weights
    file = tmp_path / "dsmoe.pt"
    model.save(file)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net.eval()(x)[0]
        loaded = YOLO(file).model.float().eval()(x)[0]
    torch.testing.assert_close(loaded, ref, rtol=1e-5, atol=1e-4)  # equal up to fp32 rounding (BN folding on load)
    torch.save({"x": x, "y": ref}, tmp_path / "io.pt")
    assert error_under_safe_load(file, tmp_path / "io.pt") <= 1


def error_under_safe_load(file, io_file) -> float:
    """Load ``file`` in a fresh process with ULTRALYTICS_SAFE_LOAD=1 and run it on io['x']: the largest error against
    io['y'] in units of assert_close's tolerance, |output - y| / (1e-4 + 1e-5 |y|) (boxes are in pixels)."""
    code = (f"import torch; from ultralytics import YOLO; m = YOLO({str(file)!r}).model.float().eval(); "
            f"io = torch.load({str(io_file)!r}); "
            "print('error', ((m(io['x'])[0] - io['y']).abs() / (1e-4 + 1e-5 * io['y'].abs())).max().item())")
    r = run_python(code, REPO, {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return float(r.stdout.strip().splitlines()[-1].split()[-1])


def test_checkpoint_without_the_plugin_says_what_to_install(tmp_path):
    """No plugin in the loading environment: a clear error naming the install command, never an auto-install."""
    file = tmp_path / "dsmoe.pt"
    YOLO("dsmoe-n.yaml").save(file)
    code = ("import sys; sys.modules['ultralytics_dsmoe'] = None  # not installed: any import of it fails\n"
            f"from ultralytics import YOLO\nYOLO({str(file)!r})")
    for safe in ("0", "1"):
        env = {**os.environ, "ULTRALYTICS_DSMOE_AUTOLOAD": "0", "ULTRALYTICS_SAFE_LOAD": safe, "YOLO_OFFLINE": "0"}
        r = run_python(code, REPO, env)
        assert r.returncode != 0
        assert "pip install ultralytics-dsmoe" in r.stderr, r.stderr[-2000:]
        assert "AutoInstall" not in r.stderr + r.stdout and "AutoUpdate" not in r.stderr + r.stdout


def test_checkpoint_from_another_plugin_version_is_named(tmp_path, caplog):
    from ultralytics_dsmoe import __version__

    model = YOLO("dsmoe-n.yaml")
    assert model.model.yaml["dsmoe_version"] == __version__  # recorded when the blocks are built
    assert "dsmoe_version" not in YOLO("yolov8n.yaml").model.yaml  # stock models are left alone
    model.save(tmp_path / "same.pt")
    model.model.yaml["dsmoe_version"] = "0.0.1"
    model.save(tmp_path / "old.pt")
    with caplog.at_level("WARNING"):
        YOLO(tmp_path / "same.pt")
        assert "was made with ultralytics-dsmoe" not in caplog.text
        YOLO(tmp_path / "old.pt")
    assert f"old.pt was made with ultralytics-dsmoe 0.0.1; this is {__version__}" in caplog.text
    assert "pip install ultralytics-dsmoe==0.0.1" in caplog.text


FIXTURES = REPO / "tests" / "fixtures"


def test_checkpoint_from_plugin_0_1_0_loads_and_computes_the_same(tmp_path):
    """A checkpoint saved before the `patches` refactor (blocks then named CBAM, unfused conv + BN pairs, per-forward
    aux losses) loads, computes its recorded outputs, rebuilds from its own yaml (fine-tuning) and fuses."""
    from ultralytics.nn.tasks import DetectionModel

    from ultralytics_dsmoe.nn import DSCBAM

    file, io = FIXTURES / "dsmoe-0.1.0-tiny.pt", torch.load(FIXTURES / "dsmoe-0.1.0-tiny-io.pt")
    model = YOLO(file).model.float().eval()
    assert any(isinstance(m, DSCBAM) for m in model.modules())  # pickled as 'CBAM'
    with torch.no_grad():
        torch.testing.assert_close(model(io["x"])[0], io["y"], rtol=1e-5, atol=1e-4)
        fused = model.fuse()(io["x"])[0]
    torch.testing.assert_close(fused, io["y"], rtol=1e-4, atol=1e-2)  # BN folding: fp32 rounding only
    assert [r[2] for r in model.yaml["backbone"]].count("CBAM") == 2  # the yaml keeps the old name ...
    rebuilt = DetectionModel(model.yaml, nc=3, verbose=False)  # ... and still builds the same blocks
    assert [type(m) for m in rebuilt.model] == [type(m) for m in model.model]
    assert error_under_safe_load(file, FIXTURES / "dsmoe-0.1.0-tiny-io.pt") <= 1


@pytest.mark.parametrize("payload", ["download", "read a file", "huge buffer"])
def test_safe_load_never_runs_a_plugin_constructor(tmp_path, monkeypatch, payload):
    """Under ULTRALYTICS_SAFE_LOAD the plugin's classes are allow-listed (restoring state needs it), so a crafted
    checkpoint can ask for a constructor call; while a checkpoint loads, the constructors refuse: no download, no file
    read, no allocation."""
    from ultralytics.nn import tasks

    from ultralytics_dsmoe.nn import ClassText, MobileSAMEncoder
    from ultralytics_dsmoe.nn import encoder as encoder_module
    from ultralytics_dsmoe.nn import text as text_module

    cls, args = {"download": (MobileSAMEncoder, (3, "download")), "read a file": (MobileSAMEncoder, (3, "/etc/passwd")),
                 "huge buffer": (ClassText, (1, 8, 20000, 1536))}[payload]

    class Crafted:
        def __reduce__(self):
            return cls, args

    file = tmp_path / "crafted.pt"
    torch.save({"model": Crafted()}, file)
    calls = []
    monkeypatch.setattr(encoder_module, "find_mobilesam_weights", lambda w: calls.append(w))
    monkeypatch.setattr(text_module, "placeholder_embeddings", lambda *a: calls.append(a))
    with pytest.raises((pickle.UnpicklingError, TypeError)) as e:
        tasks.torch_safe_load(str(file), safe_only=True)
    assert not calls
    assert f"calls {cls.__name__}" in str(e.value) or f"calls {cls.__name__}" in str(e.value.__cause__ or "")
    monkeypatch.setattr(text_module, "placeholder_embeddings", lambda *a: calls.append(a) or torch.zeros(*a))
    cls(*args[:2]) if cls is MobileSAMEncoder else cls(1, 8, 4, 16)  # outside a checkpoint load, constructors work
    assert calls == [args[1] if cls is MobileSAMEncoder else (4, 16)]
