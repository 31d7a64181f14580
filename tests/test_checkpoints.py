"""Checkpoints: save then load predicts identically, also under ULTRALYTICS_SAFE_LOAD=1 (weights-only unpickling)."""

import os

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
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        ref = net.eval()(x)[0]
        loaded = YOLO(file).model.float().eval()(x)[0]
    torch.testing.assert_close(loaded, ref, rtol=1e-5, atol=1e-4)  # equal up to fp32 rounding (BN folding on load)
    torch.save(ref, tmp_path / "ref.pt")
    code = (f"import torch; from ultralytics import YOLO; m = YOLO({str(file)!r}).model.float().eval(); "
            f"x = torch.load({str(tmp_path / 'x.pt')!r}); ref = torch.load({str(tmp_path / 'ref.pt')!r}); "
            "out = m(x)[0]; print('max diff', (out - ref).abs().max().item())")
    r = run_python(code, REPO, {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.strip().splitlines()[-1].split()[-1]) < 1e-4


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
