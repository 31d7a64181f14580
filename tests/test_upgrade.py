"""DS-MoE on the YOLO you already run: the upgrade configs, ``dsmoe upgrade``, the ``pretrained=`` transfer, and the
fine-tune benchmark's variants.

The upgraded model starts exactly where its source is (boxes and scores within 1e-5 on two image shapes), weights map
by structure with a clear error at the first row that differs, and the result fine-tunes, resumes, validates, exports
and predicts through the stock Ultralytics entry points."""

import csv
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from conftest import interrupted_training, run
from ultralytics_dsmoe import __version__, benchmark
from ultralytics_dsmoe.data.synthetic import generate
from ultralytics_dsmoe.nn import ClassText, ExpertEnsemble, HyperbolicAlign, ResidualGate, SparseMoE
from ultralytics_dsmoe.upgrade import UpgradeMismatch, added_rows, main, upgrade

NAMES = {0: "pinhole", 1: "scratch", 2: "stain", 3: "crease"}
BIN = Path(sys.executable).parent


def yolo_checkpoint(file: Path, cfg, seed: int = 0) -> Path:
    """A YOLO checkpoint with random weights and BatchNorm statistics (so every tensor matters), 4 named classes."""
    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=len(NAMES), verbose=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 1.5)
    model.names = dict(NAMES)
    y = YOLO("yolov8n.yaml")
    y.model = model
    y.save(file)
    return file


def outputs(model, x):
    with torch.no_grad():
        y = model(x)
    return y[0] if isinstance(y, (list, tuple)) else y  # (B, 4 + nc, anchors): decoded boxes and class scores


@pytest.mark.parametrize("cfg, family", [("yolov8n.yaml", "dsmoe-v8.yaml"), ("yolo11n.yaml", "dsmoe-11.yaml")])
def test_upgrade_starts_exactly_where_the_source_is(tmp_path, cfg, family):
    source = yolo_checkpoint(tmp_path / "line.pt", cfg)
    out = upgrade(source)
    assert out == tmp_path / "line-dsmoe.pt"
    a, b = YOLO(str(source)).model.eval(), YOLO(str(out)).model.eval()
    assert Path(b.yaml["yaml_file"]).name == family and b.yaml["scale"] == "n" and b.names == NAMES
    assert len(added_rows(b)) == 10 and len(b.model) == len(a.model) + 10
    gates = [m for m in b.modules() if isinstance(m, ResidualGate)]
    assert len(gates) == 1 and not gates[0].zero.weight.any()
    texts = [m for m in b.modules() if isinstance(m, ClassText)]
    assert texts[0].text_source["names"] == list(NAMES.values())  # embedded at upgrade time: predict needs no text model
    for shape in ((1, 3, 64, 64), (2, 3, 96, 160)):
        x = torch.rand(shape)
        assert (outputs(a, x) - outputs(b, x)).abs().max() <= 1e-5
    image = (np.random.default_rng(0).random((120, 90, 3)) * 255).astype(np.uint8)
    pa, pb = (YOLO(str(f)).predict(image, imgsz=96, conf=0.0, verbose=False)[0].boxes for f in (source, out))
    assert len(pa) > 0
    torch.testing.assert_close(pb.xyxy, pa.xyxy, atol=1e-5, rtol=0)
    torch.testing.assert_close(pb.conf, pa.conf, atol=1e-5, rtol=0)
    gates[0].zero.weight.data.normal_(0, 0.5)  # the branch is live: opening the gate changes the output
    assert (outputs(a, x) - outputs(b, x)).abs().max() > 1e-3


def test_upgrade_with_fewer_stages_starts_where_the_source_is_and_keeps_them_out(tmp_path):
    """``dsmoe upgrade --stages hyperbolic``: text and Poincare alignment only (a dense conv where the experts were,
    BCE); ``--stages text`` aligns in Euclidean space. Exact at the start, and the checkpoint rebuilds what it holds."""
    source = yolo_checkpoint(tmp_path / "line.pt", "yolov8n.yaml")
    a = YOLO(str(source)).model.eval()
    x = torch.rand(2, 3, 96, 160)
    for stages, poincare in (("hyperbolic", True), ("text", False)):
        out = main([str(source), "--out", str(tmp_path / f"{stages}.pt"), "--stages", stages])
        b = YOLO(str(out)).model.eval()
        assert not any(isinstance(m, SparseMoE) for m in b.modules()) and b.yaml["loss"] == "default"
        assert [m.hyperbolic for m in b.modules() if isinstance(m, HyperbolicAlign)] == [poincare]
        assert len(added_rows(b)) == 10  # the same rows as the full upgrade: one mapping for every column
        assert (outputs(a, x) - outputs(b, x)).abs().max() <= 1e-5
        assert torch.load(out, weights_only=False)["dsmoe_upgrade"]["stages"] == stages
        rebuilt = DetectionModel(b.yaml, nc=4, verbose=False)  # what `yolo train model=<out>.pt` builds
        assert rebuilt.state_dict().keys() == b.state_dict().keys()
    with pytest.raises(SystemExit):  # argparse names the choices
        main([str(source), "--stages", "experts-only"])


def test_a_source_that_does_not_match_fails_naming_the_first_row(tmp_path):
    v11 = yolo_checkpoint(tmp_path / "v11.pt", "yolo11n.yaml")
    with pytest.raises(UpgradeMismatch, match=r"yolo11n.yaml row 2 \(C3k2\) against dsmoe-v8n.yaml row 2 \(C2f\)"):
        upgrade(v11, cfg="dsmoe-v8.yaml")
    d = yaml_model_load("yolov8n.yaml")
    d["backbone"][3][3] = [192, 3, 2]  # a user's narrower P3 conv
    narrow = yolo_checkpoint(tmp_path / "narrow.pt", d)
    with pytest.raises(UpgradeMismatch, match=r"row 3 \(Conv\) against dsmoe-v8n.yaml row 3 \(Conv\): conv.weight is "
                                              r"\(48, 32, 3, 3\) against \(64, 32, 3, 3\)"):
        upgrade(narrow, cfg="dsmoe-v8.yaml")
    with pytest.raises(UpgradeMismatch) as e:  # no config given: each candidate's reason is listed
        upgrade(narrow)
    assert "dsmoe-v8n.yaml row 3" in str(e.value) and "dsmoe-11n.yaml row 2 (C3k2)" in str(e.value)
    upgraded = upgrade(yolo_checkpoint(tmp_path / "v8.pt", "yolov8n.yaml"))
    with pytest.raises(UpgradeMismatch, match="already has DS-MoE stages"):
        upgrade(upgraded)
    with pytest.raises(SystemExit, match="dsmoe upgrade: no checkpoint"):
        main([str(tmp_path / "missing.pt")])
    assert not (tmp_path / "narrow-dsmoe.pt").exists() and not (tmp_path / "v11-dsmoe.pt").exists()


def test_upgrade_refuses_what_is_not_a_trained_checkpoint_and_never_overwrites_it(tmp_path):
    source = yolo_checkpoint(tmp_path / "line.pt", "yolov8n.yaml")
    before = source.read_bytes()
    (tmp_path / "yolov8n.yaml").write_text("nc: 4\n")  # a model yaml would build, and upgrade, random weights
    with pytest.raises(UpgradeMismatch, match="not a trained checkpoint"):
        upgrade(tmp_path / "yolov8n.yaml")
    with pytest.raises(UpgradeMismatch, match="is the source checkpoint itself"):
        upgrade(source, out=tmp_path / "." / "line.pt")
    (tmp_path / "cut.pt").write_bytes(before[: len(before) // 2])  # a truncated copy
    with pytest.raises(SystemExit, match=r"dsmoe upgrade: .*cut.pt cannot be read as an Ultralytics checkpoint"):
        main([str(tmp_path / "cut.pt")])
    assert source.read_bytes() == before and not list(tmp_path.glob("*-dsmoe.pt"))


def test_upgrade_keeps_the_gamma_the_source_was_trained_with(tmp_path):
    y = YOLO(str(yolo_checkpoint(tmp_path / "line.pt", "yolov8n.yaml")))
    y.model.yaml["gamma"] = 1.5  # what training on a data yaml with `gamma: 1.5` records
    y.save(tmp_path / "gamma.pt")
    assert YOLO(str(upgrade(tmp_path / "gamma.pt"))).model.yaml["gamma"] == 1.5  # predict and val apply it alike
    assert "gamma" not in YOLO(str(upgrade(tmp_path / "line.pt"))).model.yaml


def test_pretrained_yolo_weights_transfer_by_structure_into_an_upgrade_config(tmp_path):
    """``yolo train model=dsmoe-v8n.yaml pretrained=yolov8n.pt`` goes through BaseModel.load: same start as upgrade."""
    source = YOLO(str(yolo_checkpoint(tmp_path / "v8.pt", "yolov8n.yaml"))).model.eval()
    target = DetectionModel("dsmoe-v8n.yaml", nc=4, verbose=False)
    target.load(source)
    x = torch.rand(1, 3, 64, 96)
    assert (outputs(source, x) - outputs(target.eval(), x)).abs().max() <= 1e-5
    with pytest.raises(UpgradeMismatch, match="row 2"):
        DetectionModel("dsmoe-11n.yaml", nc=4, verbose=False).load(source)
    with pytest.raises(UpgradeMismatch, match=r"row 0 \(Conv\).*conv.weight is \(16, 3, 3, 3\) against \(32, 3, 3, 3\)"):
        DetectionModel("dsmoe-v8s.yaml", nc=4, verbose=False).load(source)  # another scale: never a silent partial load
    other_nc = DetectionModel("dsmoe-v8n.yaml", nc=2, verbose=False)  # another class count: the head is Ultralytics'
    other_nc.load(source)
    torch.testing.assert_close(other_nc.model[0].conv.weight, source.model[0].conv.weight)


def test_upgraded_model_exports_to_onnx_with_parity(tmp_path):
    import onnxruntime as ort

    out = upgrade(yolo_checkpoint(tmp_path / "v8.pt", "yolov8n.yaml"))
    model = YOLO(str(out))
    torch.manual_seed(1)
    for m in model.model.modules():  # open the gates, so the exported graph's DS-MoE branch counts
        if isinstance(m, ResidualGate):
            m.zero.weight.data.normal_(0, 0.5)
    expected = outputs(model.model.float().eval().fuse(), x := torch.rand(1, 3, 96, 96))
    file = model.export(format="onnx", imgsz=96, simplify=False, device="cpu")
    got = ort.InferenceSession(file, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=2e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory):
    """A yolov8n trained for one epoch on a tiny synthetic set: the line's model."""
    root = tmp_path_factory.mktemp("upgrade")
    data = generate(root / "data", seed=3, train=8, val=4, imgsz=64)
    (root / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\n"
                                    "names: {0: pinhole, 1: scratch, 2: stain, 3: crease}\n")
    YOLO("yolov8n.yaml").train(data=str(root / "data.yaml"), epochs=1, imgsz=64, batch=4, workers=0, plots=False,
                               project=str(root / "runs"), name="base", exist_ok=True, verbose=False)
    return root, root / "runs" / "base" / "weights" / "best.pt"


def test_upgrade_fine_tunes_resumes_validates_exports_and_predicts_through_stock_commands(trained_base):
    root, base = trained_base
    r = run([str(BIN / "dsmoe"), "upgrade", str(base), "--out", str(root / "line-dsmoe.pt"),
             "--data", str(root / "data.yaml")], root)
    assert r.returncode == 0 and "every source tensor mapped" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    code = interrupted_training(root / "line-dsmoe.pt", root / "data.yaml", root / "runs", "ft")
    r = run([sys.executable, "-c", code], root)
    assert "interrupted" in r.stdout, (r.stdout + r.stderr)[-3000:]
    assert "reusing the checkpoint's embeddings" in r.stdout + r.stderr  # same classes: the upgrade's text is kept
    weights = root / "runs" / "ft" / "weights"
    r = run([str(BIN / "yolo"), "train", "resume", f"model={weights / 'last.pt'}"], root)
    assert r.returncode == 0 and "Resuming training" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    with open(root / "runs" / "ft" / "results.csv") as f:
        rows = list(csv.reader(f))
    assert [row[0].strip() for row in rows[1:]] == ["1", "2"] and "train/moe_loss" in [h.strip() for h in rows[0]]
    tuned = YOLO(str(weights / "last.pt")).model
    zero = next(m for m in tuned.modules() if isinstance(m, ResidualGate)).zero.weight
    assert zero.abs().max() > 0  # training moved the gate off zero
    for args in (["val", f"model={weights / 'best.pt'}", f"data={root / 'data.yaml'}", "imgsz=64", "batch=4"],
                 ["export", f"model={weights / 'best.pt'}", "format=onnx", "imgsz=64"]):
        r = run([str(BIN / "yolo"), *args], root)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    image = next((root / "data" / "images" / "val").iterdir())
    r = run([str(BIN / "yolo"), "predict", f"model={weights / 'best.onnx'}", f"source={image}", "imgsz=64",
             f"project={root / 'runs'}", "name=pred", "exist_ok=True"], root)
    saved = [f.stem for f in (root / "runs" / "pred").iterdir()] if (root / "runs" / "pred").is_dir() else []
    assert r.returncode == 0 and saved == [image.stem], (r.stdout + r.stderr)[-3000:]


def test_finetune_variants_are_the_paper_columns_on_the_base_the_text_controls_and_grounding(trained_base, tmp_path,
                                                                                             capsys):
    _, base = trained_base
    variants = benchmark.finetune_variants(str(base), tmp_path)
    assert list(variants) == ["yolov8n", "dsmoe-v8-text-n", "dsmoe-v8-hyperbolic-n", "dsmoe-v8-experts-n", "dsmoe-v8n",
                              "dsmoe-v8-shuffled-n", "dsmoe-v8-random-n", "dsmoe-v8-grounded-n",
                              "dsmoe-v8-grounded_shuffled-n", "dsmoe-v8-grounded_regions-n",
                              "dsmoe-v8-grounded_regions_bg-n", "dsmoe-v8-grounded_pixel-n"]
    assert variants["yolov8n"] == str(base.resolve())
    some = benchmark.finetune_variants(str(base), tmp_path / "some", keep=("full", "random"))  # --variants full random
    assert list(some) == ["yolov8n", "dsmoe-v8n", "dsmoe-v8-random-n"]
    swept = benchmark.finetune_variants(str(base), tmp_path / "gains",  # --variants grounded_regions:2 random ...
                                        keep=("grounded_regions:2", "random", "grounded_regions", "grounded_regions:0.1"))
    assert list(swept) == ["yolov8n", "dsmoe-v8-random-n", "dsmoe-v8-grounded_regions-g2-n",
                           "dsmoe-v8-grounded_regions-n", "dsmoe-v8-grounded_regions-g0.1-n"]
    gains = [yaml_model_load(swept[k]).get("ground_gain") for k in list(swept)[1:]]
    assert gains == [0.0, 2.0, benchmark.GROUND_GAIN, 0.1]
    assert {yaml_model_load(cfg)["scale"] for cfg in list(swept.values())[1:]} == {"n"}  # the base's scale, dots or not
    losses = benchmark.finetune_variants(str(base), tmp_path / "losses",  # the loss-gain sweep of issue 12
                                         keep=("full", "full:qfl_gain=4", "hyperbolic:align_gain=0.2",
                                               "grounded:2,moe_balance=0.1", "experts:align_gain=0.2,moe_balance=1",
                                               "experts:moe_balance=1,align_gain=0.2"))  # one setting, two spellings
    assert list(losses)[1:] == ["dsmoe-v8-hyperbolic-a0.2-n", "dsmoe-v8-experts-b1-a0.2-n", "dsmoe-v8n",
                                "dsmoe-v8-full-q4-n", "dsmoe-v8-grounded-g2-b0.1-n"]
    keys = ("qfl_gain", "align_gain", "moe_balance", "ground_gain")
    cfg = {k: [yaml_model_load(c).get(key) for key in keys] for k, c in list(losses.items())[1:]}
    default = cfg["dsmoe-v8n"]
    assert cfg["dsmoe-v8-full-q4-n"] == [4.0, *default[1:]]
    assert cfg["dsmoe-v8-hyperbolic-a0.2-n"][1] == 0.2 and cfg["dsmoe-v8-hyperbolic-a0.2-n"][0] == default[0]
    assert cfg["dsmoe-v8-grounded-g2-b0.1-n"] == [default[0], default[1], 0.1, 2.0]
    assert benchmark.variant_gains("dsmoe-v8-grounded-g2-b0.1-n") == {"ground_gain": 2.0, "moe_balance": 0.1}
    assert benchmark.column_label("dsmoe-v8-full-q4-n") == benchmark.STAGES["full"] + "; qfl_gain 4"
    results = {f"{v}-seed0": {"map50": 0.5, "map50_95": 0.3, "gflops": 1.0, "ort_ms": 9.0} for v in ("b", "dsmoe-v8-full-q4-n", "f")}
    summary = benchmark.finetune_summary(results, ["b", "dsmoe-v8-full-q4-n", "f"], [0], "base.pt")
    assert all(k.startswith("f ") for k in summary["targets"])  # the targets judge the full upgrade, not a sweep row
    for bad, says in (("random:2", "ground_gain applies only to grounded"), ("grounded:x", "must be a number"),
                      ("nope", "unknown"), ("hyperbolic:qfl_gain=2", "qfl_gain applies only to full"),
                      ("text:moe_balance=1", "moe_balance applies only"), ("full:lr=1", "unknown gain")):
        with pytest.raises(SystemExit):  # the CLI refuses it before anything trains, saying why
            benchmark.main(["--data", "data.yaml", "--finetune-from", str(base), "--variants", bad])
        assert says in capsys.readouterr().err
    assert "ground_gain 2" in benchmark.column_label("dsmoe-v8-grounded_regions-g2-n")
    assert f"ground_gain {benchmark.GROUND_GAIN:g}" in benchmark.column_label("dsmoe-v8-grounded_regions-n")
    seen = {}
    for name, cfg in list(variants.items())[1:]:
        d = yaml_model_load(cfg)
        model = DetectionModel(cfg, nc=4, verbose=False)
        hyperbolic = next(m for m in model.modules() if isinstance(m, HyperbolicAlign)).hyperbolic
        manifold = "poincare" if hyperbolic else "euclidean"
        moe = next((m for m in model.modules() if isinstance(m, SparseMoE)), None)
        routing = None if moe is None else (moe.regions, moe.router.affinity, moe.router.background)
        ensemble = next((m for m in model.modules() if isinstance(m, ExpertEnsemble)), None)
        pixel = {hasattr(moe, "text_log_tau"), hasattr(ensemble, "log_tau")} if moe else {False}
        assert len(pixel) == 1, name  # both blocks take G, or neither
        seen[name] = (d["loss"], routing, manifold, d.get("text_control", "real"), d.get("ground_gain"), *pixel)
        model.load(YOLO(str(base)).model)  # every variant starts from the base checkpoint, gates at zero
    assert seen == {
        "dsmoe-v8-text-n": ("default", None, "euclidean", "real", 0.0, False),
        "dsmoe-v8-hyperbolic-n": ("default", None, "poincare", "real", 0.0, False),
        "dsmoe-v8-experts-n": ("default", (1, False, False), "poincare", "real", 0.0, False),
        "dsmoe-v8n": ("qfocal", (1, False, False), "poincare", "real", 0.0, False),
        "dsmoe-v8-shuffled-n": ("qfocal", (1, False, False), "poincare", "shuffled", 0.0, False),
        "dsmoe-v8-random-n": ("qfocal", (1, False, False), "poincare", "random", 0.0, False),
        "dsmoe-v8-grounded-n": ("qfocal", (1, False, False), "poincare", "real", benchmark.GROUND_GAIN, False),
        "dsmoe-v8-grounded_shuffled-n": ("qfocal", (1, False, False), "poincare", "shuffled", benchmark.GROUND_GAIN,
                                         False),
        "dsmoe-v8-grounded_regions-n": ("qfocal", (4, True, False), "poincare", "real", benchmark.GROUND_GAIN, False),
        "dsmoe-v8-grounded_regions_bg-n": ("qfocal", (4, True, True), "poincare", "real", benchmark.GROUND_GAIN, False),
        "dsmoe-v8-grounded_pixel-n": ("qfocal", (1, False, False), "poincare", "real", benchmark.GROUND_GAIN, True),
    }


def test_finetune_summary_pairs_seeds_and_counts_a_gain_only_beyond_the_spread():
    runs = {}
    for seed, (stock, full, text) in enumerate([(0.30, 0.33, 0.31), (0.32, 0.34, 0.31), (0.31, 0.35, 0.32)]):
        for name, m in (("yolov8s", stock), ("dsmoe-v8s", full), ("dsmoe-v8s-text", text)):
            runs[f"{name}-seed{seed}"] = {"map50": 2 * m, "map50_95": m, "gflops": {"yolov8s": 28.4}.get(name, 29.9),
                                          "ort_ms": {"yolov8s": 100.0}.get(name, 112.0)}
    s = benchmark.finetune_summary(runs, ["yolov8s", "dsmoe-v8s-text", "dsmoe-v8s"], [0, 1, 2], "base.pt")
    full, text = s["variants"]["dsmoe-v8s"], s["variants"]["dsmoe-v8s-text"]
    np.testing.assert_allclose(full["gain_pp"], [3.0, 1.0], atol=1e-9)  # paired gains 3, 2, 4 pp
    np.testing.assert_allclose(text["gain_pp"], [1 / 3, np.std([1, -1, 1], ddof=1)], atol=1e-9)
    assert full["beyond_spread"] and not text["beyond_spread"]
    two = benchmark.finetune_summary(runs, ["yolov8s", "dsmoe-v8s-text", "dsmoe-v8s"], [0, 1], "base.pt")
    assert two["variants"]["dsmoe-v8s"]["gain_pp"] == pytest.approx([2.5, 0.5 ** 0.5])  # 3 and 2 pp agree ...
    assert not two["variants"]["dsmoe-v8s"]["beyond_spread"]  # ... but two seeds are not a spread
    assert two["targets"]["dsmoe-v8s mAP50-95 gain - std (pp)"][2] is False
    assert s["targets"]["dsmoe-v8s mAP50-95 gain - std (pp)"] == pytest.approx([2.0, 1.5, True])
    assert s["targets"]["dsmoe-v8s ONNX Runtime latency vs yolov8s"] == pytest.approx([1.12, 1.15, True])


def test_finetune_benchmark_reports_paired_gains_and_gates(trained_base, tmp_path):
    """The README's `dsmoe benchmark --finetune-from` at tiny scale, the stock run and the full upgrade over two seeds."""
    root, base = trained_base
    report = benchmark.main(["--data", str(root / "data.yaml"), "--finetune-from", str(base), "--variants", "full",
                             "--seeds", "0", "1", "--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0",
                             "--latency-imgsz", "64", "--reps", "1", "--threads", "1", "--out", str(tmp_path)])
    assert list(report["models"]) == ["yolov8n-seed0", "yolov8n-seed1", "dsmoe-v8n-seed0", "dsmoe-v8n-seed1"]
    runs = report["models"]
    assert runs["yolov8n-seed0"]["branch_share"] is None and runs["dsmoe-v8n-seed0"]["branch_share"] > 0
    assert runs["dsmoe-v8n-seed1"]["gflops"] == runs["dsmoe-v8n-seed0"]["gflops"]  # cost measured once per variant
    f = report["finetune"]
    assert f["stock"] == "yolov8n" and list(f["variants"]) == ["yolov8n", "dsmoe-v8n"] and f["seeds"] == [0, 1]
    gains = [100 * (runs[f"dsmoe-v8n-seed{s}"]["map50_95"] - runs[f"yolov8n-seed{s}"]["map50_95"]) for s in (0, 1)]
    assert f["variants"]["dsmoe-v8n"]["gain_pp"][0] == pytest.approx(np.mean(gains))
    assert f["variants"]["dsmoe-v8n"]["gflops_ratio"] > 1.0 and "dsmoe-v8n GFLOPs vs yolov8n" in f["targets"]
    md = (tmp_path / "results.md").read_text()
    assert "## Fine-tuned from best.pt (seeds 0, 1)" in md and "| dsmoe-v8n | + QFocal: the full upgrade |" in md
    assert "| dsmoe-v8n mAP50-95 gain - std (pp) |" in md  # the targets table, judged on the full upgrade
    saved = {n: json.loads((tmp_path / "runs" / f"{n}.result.json").read_text()) for n in runs}
    assert {r["dsmoe_version"] for r in saved.values()} == {__version__}  # a reused run says which version trained it
    specs = {n: r["spec"] for n, r in saved.items()}
    assert {s["train"]["pretrained"] for s in specs.values()} == {str(base.resolve())}
    assert [s["train"]["seed"] for s in specs.values()] == [0, 1, 0, 1]


@pytest.mark.parametrize("yolo, upgraded", [("yolov8s", "dsmoe-v8s"), ("yolo11s", "dsmoe-11s")])
def test_upgrade_costs_at_most_15_percent_more_flops_than_its_source(yolo, upgraded):
    """The issue's inference-cost target at 640 px, counted by the benchmark's FLOP counter (deterministic)."""
    from ultralytics_dsmoe.costs import build, model_costs

    ratio = model_costs(build(f"{upgraded}.yaml"), 640)["gflops"] / model_costs(build(f"{yolo}.yaml"), 640)["gflops"]
    assert 1.0 < ratio <= 1.15


def test_zero_convolution_gate_trains_from_the_first_step_and_reads_old_checkpoints():
    """Z = 0 returns the trunk exactly, yet dL/dZ is non-zero (a per-channel gain's gradient pairs channels only);
    after one step the branch itself gets gradient. A pickled first gate (y = x + g * F) loads as Z = diag(g)."""
    torch.manual_seed(0)
    gate, branch = ResidualGate([8, 4]), nn.Conv2d(8, 4, 3, padding=1)
    x = torch.randn(2, 8, 6, 6)
    y = gate([x, branch(x)])
    assert torch.equal(y, x)
    (y * torch.randn_like(y)).sum().backward()
    assert gate.zero.weight.grad.abs().min() > 0 and branch.weight.grad.abs().max() == 0  # only Z moves at step 1
    with torch.no_grad():
        gate.zero.weight -= 0.1 * gate.zero.weight.grad
    branch.zero_grad()
    y = gate([x, branch(x)])
    (y * torch.randn_like(y)).sum().backward()
    assert branch.weight.grad.abs().max() > 0  # step 2: the stages train

    old = ResidualGate([4, 4])
    del old.zero
    old.gain = nn.Parameter(torch.tensor([0.5, -1.0, 0.0, 2.0]))
    loaded = pickle.loads(pickle.dumps(old))
    f = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(loaded([x[:, :4], f]), x[:, :4] + old.gain.view(1, -1, 1, 1) * f)


def test_benchmark_latency_runs_with_the_threads_it_was_given(trained_base, monkeypatch):
    """Ultralytics' select_device (also inside export) sets torch's threads to cores - 1; the latency rounds must not
    inherit that: eager and ONNX Runtime run with the benchmark's --threads."""
    from ultralytics_dsmoe import costs

    root, base = trained_base
    seen, real = [], costs.ort_session
    monkeypatch.setattr(costs, "ort_session", lambda file, threads, *a: seen.append(threads) or real(file, threads, *a))
    before = torch.get_num_threads()
    torch.set_num_threads(9)  # never Ultralytics' choice: min(8, cores - 1)
    try:
        results = {"base": {"best": str(base)}}
        benchmark.measure_inference(results, 64, "cpu", 1)
        assert seen == [9] and torch.get_num_threads() == 9 and results["base"]["ort_ms"] > 0
    finally:
        torch.set_num_threads(before)
