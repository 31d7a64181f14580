"""Shipped variant configs: ablation columns A-F (paper Tables 2/4/9) and the P2/4 tiny-object variant (Tables 6-7).

Each column must differ from the previous one by exactly its own component, build at scale n, detect, and train.
"""

import os

import pytest
import torch

from conftest import REPO, two_box_batch
from ultralytics.nn.modules import Detect, TorchVision
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils import DEFAULT_CFG
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics_dsmoe.loss import QualityFocalDetectionLoss
from ultralytics_dsmoe.nn import (
    AnisotropicDSConv,
    ClassText,
    FeatureAggregate,
    HyperbolicAlign,
    HybridEncoder,
    MobileSAMEncoder,
    Pick,
    SparseMoE,
)

CFG = REPO / "cfg"
NC = 2
# Paper Tables 2/4/9: column -> (DeepSeek text, MobileSAM (else ResNet-50), hyperbolic alignment, dynamic experts, loss)
TABLE = {
    "a": (False, False, False, False, "default"),
    "b": (True, False, False, False, "default"),
    "c": (True, True, False, False, "default"),
    "d": (True, True, True, False, "default"),
    "e": (True, True, True, True, "default"),
    "f": (True, True, True, True, "qfocal"),
}
CONFIGS = [f"dsmoe-ablation-{c}" for c in TABLE] + ["dsmoe-p2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """64x64 inputs: extra intra-op threads only add overhead (and spin-wait on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def build():
    """Build each config once at scale n (ResNet-50 and TinyViT builds dominate the run time)."""
    cache = {}

    def get(stem: str) -> DetectionModel:
        if stem not in cache:
            torch.manual_seed(0)
            model = DetectionModel(yaml_model_load(f"{stem}-n.yaml"), nc=NC, verbose=False)
            model.args = DEFAULT_CFG
            cache[stem] = model
        return cache[stem]

    yield get
    cache.clear()


def rows(stem: str) -> list:
    d = yaml_model_load(f"{stem}.yaml")
    return d["backbone"] + d["head"]


def changed_rows(a: str, b: str) -> list[int]:
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb)
    return [i for i, (x, y) in enumerate(zip(ra, rb)) if x != y]


def blocks(model: DetectionModel, cls: type) -> list:
    return [m for m in model.modules() if isinstance(m, cls)]


def test_column_e_is_the_default_model():
    link = CFG / "dsmoe-ablation-e.yaml"
    assert link.is_symlink() and os.readlink(link) == "dsmoe.yaml"  # relative: cannot drift from dsmoe.yaml
    assert link.read_bytes() == (CFG / "dsmoe.yaml").read_bytes()
    assert yaml_model_load("dsmoe-ablation-e.yaml")["loss"] == "default"  # BCE: the measured best from scratch
    assert yaml_model_load("dsmoe-ablation-f.yaml")["loss"] == "qfocal"  # the paper's full model


def test_each_column_changes_only_its_component():
    full = yaml_model_load("dsmoe.yaml")
    a, b, c = rows("dsmoe-ablation-a"), rows("dsmoe-ablation-b"), rows("dsmoe-ablation-c")
    assert a[:5] == [b[0], b[1], b[3], b[13], b[14]]  # A -> B: same ResNet-50 taps (layer2-4) and SPPF ...
    assert [r[1:] for r in a[5:]] == [r[1:] for r in b[15:]]  # ... and the same PAN + Detect (`from` aside)
    assert [r[2] for r in b[2:13]] == ["DSCBAM", "Index", "DSCBAM", "ClassText", "SemanticDistill", "HyperbolicAlign",
                                       "SpaceBroadcast", "Conv", "ExpertEnsemble", "FeatureAggregate", "Conv"]
    assert [r[1:] for r in b[4:13]] == [r[1:] for r in c[6:15]]  # B -> C: the same text + core stages at P4
    assert changed_rows("dsmoe-ablation-c", "dsmoe-ablation-d") == [9]  # HyperbolicAlign: euclidean -> poincare
    assert rows("dsmoe-ablation-c")[9][3][-1] == "euclidean" and rows("dsmoe-ablation-d")[9][3][-1] == "poincare"
    assert changed_rows("dsmoe-ablation-d", "dsmoe-ablation-e") == [11]  # dense Conv -> SparseMoE
    assert rows("dsmoe-ablation-d")[11][2] == "Conv" and rows("dsmoe-ablation-e")[11][2] == "SparseMoE"
    assert changed_rows("dsmoe-ablation-f", "dsmoe") == []  # F: the same architecture as E (dsmoe.yaml) ...
    f = yaml_model_load("dsmoe-ablation-f.yaml")
    assert {k for k in full.keys() | f.keys() if full.get(k) != f.get(k)} == {"loss", "yaml_file"}  # ... loss only
    for stem in CONFIGS:  # every variant keeps dsmoe.yaml's scales and gains
        d = yaml_model_load(f"{stem}.yaml")
        keys = ("scales", "qfl_alpha", "qfl_beta", "qfl_gain", "moe_balance", "moe_zloss", "align_gain", "ground_gain")
        assert {k: d[k] for k in keys} == {k: full[k] for k in keys}


@pytest.mark.parametrize("stem", CONFIGS)
@pytest.mark.parametrize("scale", ["s", "m"])
def test_scale_suffix_selects_scale(stem, scale):
    d = yaml_model_load(f"{stem}-{scale}.yaml")
    assert d["scale"] == scale and d["backbone"] + d["head"] == rows(stem)


@pytest.mark.parametrize("column", list(TABLE))
def test_ablation_column_components(build, column):
    text, mobilesam, hyperbolic, experts, loss = TABLE[column]
    model = build(f"dsmoe-ablation-{column}")
    backbone = model.model[0]
    if mobilesam:
        assert isinstance(backbone, HybridEncoder) and len(blocks(model, AnisotropicDSConv)) == 2
    else:
        assert isinstance(backbone, TorchVision) and type(backbone.m[-1][0]).__name__ == "Bottleneck"  # ResNet-50
        assert sum(p.numel() for p in backbone.parameters()) == 23_508_032  # torchvision resnet50 minus avgpool/fc
        assert not blocks(model, MobileSAMEncoder) and not blocks(model, AnisotropicDSConv)
    assert bool(blocks(model, ClassText)) == text
    aligns = blocks(model, HyperbolicAlign)
    assert [a.hyperbolic for a in aligns] == ([hyperbolic] if text else [])
    assert bool(blocks(model, SparseMoE)) == experts
    if not text:  # column A: no DS-MoE stage at all, a stock YOLOv8 neck and head on ResNet-50
        assert not [m for m in model.modules() if type(m).__module__.startswith("ultralytics_dsmoe")]
    assert model.yaml["loss"] == loss
    criterion = model.init_criterion()
    base = getattr(criterion, "criterion", criterion)
    assert type(base) is (QualityFocalDetectionLoss if loss == "qfocal" else v8DetectionLoss)
    assert model.yaml["scale"] == "n" and model.stride.tolist() == [8, 16, 32]
    y, raw = eval_forward(model, torch.rand(1, 3, 64, 64))
    assert y.shape == (1, 4 + NC, 8 * 8 + 4 * 4 + 2 * 2) and torch.isfinite(y).all()
    assert [tuple(f.shape[-2:]) for f in raw["feats"]] == [(8, 8), (4, 4), (2, 2)]


def test_p2_variant_detects_at_stride_4(build):
    model = build("dsmoe-p2")
    detect = model.model[-1]
    assert isinstance(detect, Detect) and detect.nl == 4 and model.stride.tolist() == [4, 8, 16, 32]
    p2 = model.model[18]
    assert isinstance(p2, Pick) and p2.index == 0 and p2.f == 0  # MobileSAMEncoder's P2/4 output (64 ch)
    assert [m.i for m in model.model if m.f == 0] == [1, 4, 18]  # P3, P4 and P2 taps of the encoder
    assert detect.f == [29, 32, 35, 38] and model.model[29].f == -1 and model.model[28].f == [-1, 20]  # P2 fusion
    assert [cv[0].conv.in_channels for cv in detect.cv2] == [32, 64, 128, 256]  # C2f [128, 256, 512, 1024] x 0.25
    assert blocks(model, SparseMoE) and model.yaml["loss"] == "default"  # otherwise dsmoe.yaml
    y, raw = eval_forward(model, torch.rand(1, 3, 64, 64))
    assert y.shape == (1, 4 + NC, 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2)
    assert [tuple(f.shape[-2:]) for f in raw["feats"]] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def eval_forward(model, x):
    """Inference outputs (decoded, raw dict) of a module-scoped model, which is left in train mode."""
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train()


@pytest.mark.parametrize("stem", CONFIGS)
def test_train_step(build, stem):
    torch.manual_seed(0)
    model = build(stem)
    model.zero_grad(set_to_none=True)
    model.criterion = None  # fresh criterion from the YAML
    batch = two_box_batch()
    loss, items = model.loss(batch)
    expected = {"box_loss", "cls_loss", "dfl_loss"}
    expected |= {"moe_loss"} if blocks(model, SparseMoE) else set()
    expected |= {"align_loss"} if blocks(model, FeatureAggregate) else set()
    assert set(items) == expected
    assert torch.isfinite(loss).all() and all(torch.isfinite(v) for v in items.values())
    loss.sum().backward()
    grads = {
        "backbone": next(model.model[0].parameters()).grad,
        "cls head": model.model[-1].cv3[0][-1].weight.grad,
        **{f"text {i}": m.proj[0].weight.grad for i, m in enumerate(blocks(model, ClassText))},
        **{f"router {i}": m.router.queries.grad for i, m in enumerate(blocks(model, SparseMoE))},
    }
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [k for k, g in grads.items() if g is None]
    model.zero_grad(set_to_none=True)
