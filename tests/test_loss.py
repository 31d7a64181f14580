"""QFocal + CIoU + DFL: numerics of eq. 32, selection from the model YAML for training and validation (EMA)."""

import math

import pytest
import torch

from conftest import two_box_batch
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils import DEFAULT_CFG
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics.utils.torch_utils import ModelEMA
from ultralytics_dsmoe.loss import AuxLosses, QualityFocalDetectionLoss, QualityFocalLoss


def test_qfl_matches_equation_32():
    logits = torch.tensor([-2.0, 0.0, 1.5, 3.0], dtype=torch.float64)
    y = torch.tensor([0.0, 0.3, 0.8, 1.0], dtype=torch.float64)
    alpha, beta = 0.45, 2.0
    expected = []
    for z, t in zip(logits.tolist(), y.tolist()):
        s = 1 / (1 + math.exp(-z))
        a_t = t * alpha + (1 - t) * (1 - alpha)
        expected.append(-a_t * abs(t - s) ** beta * ((1 - t) * math.log(1 - s) + t * math.log(s)))
    torch.testing.assert_close(QualityFocalLoss(alpha, beta)(logits, y), torch.tensor(expected, dtype=torch.float64))


def test_qfl_reduces_to_bce_and_focuses():
    logits, y = torch.randn(64), torch.rand(64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    torch.testing.assert_close(QualityFocalLoss(alpha=None, beta=0.0)(logits, y), bce)
    easy = QualityFocalLoss()(torch.tensor([-6.0]), torch.tensor([0.0]))  # confident correct negative
    hard = QualityFocalLoss()(torch.tensor([2.0]), torch.tensor([0.0]))
    assert easy < 1e-5 < hard


def _model(cfg="dsmoe-n.yaml", **yaml_overrides):
    d = yaml_model_load(cfg)
    d.update(yaml_overrides)
    model = DetectionModel(d, nc=2, verbose=False)
    model.args = DEFAULT_CFG
    return model


def test_yaml_selects_loss_for_train_and_ema_validation():
    model = _model(loss="qfocal", qfl_gain=3.0, qfl_alpha=0.3)
    criterion = model.init_criterion()
    assert isinstance(criterion, AuxLosses) and isinstance(criterion.criterion, QualityFocalDetectionLoss)
    assert criterion.qfl_gain == 3.0 and criterion.qfl.alpha == 0.3  # attributes reach the wrapped criterion
    ema = ModelEMA(model).ema  # the trainer validates with this copy
    ema_criterion = ema.init_criterion()
    assert isinstance(ema_criterion.criterion, QualityFocalDetectionLoss)
    assert all(m in set(ema.modules()) for _, _, mods in ema_criterion.terms for m in mods)  # the EMA's own blocks


def test_stock_and_default_models_keep_bce():
    assert type(_model("yolov8n.yaml").init_criterion()) is v8DetectionLoss
    assert type(_model().init_criterion().criterion) is v8DetectionLoss  # dsmoe.yaml's default: BCE (+ aux terms)
    assert type(_model("dsmoe-ablation-f-n.yaml").init_criterion().criterion) is QualityFocalDetectionLoss
    with pytest.raises(ValueError, match="Unknown 'loss: focal'"):
        _model(loss="focal").init_criterion()


def test_qfocal_loss_trains_the_head():
    torch.manual_seed(0)
    model = _model(loss="qfocal")
    batch = two_box_batch()
    loss, items = model.loss(batch)
    assert set(items) == {"box_loss", "cls_loss", "dfl_loss", "moe_loss", "align_loss"}
    assert all(torch.isfinite(v) for v in items.values()) and items["cls_loss"] > 0
    loss.sum().backward()
    cls_head = model.model[-1].cv3[0][-1]
    assert cls_head.weight.grad is not None and cls_head.weight.grad.abs().sum() > 0
    model.zero_grad()
    bce_model = _model(loss="default")
    bce_model.load_state_dict(model.state_dict())
    _, bce_items = bce_model.loss(batch)
    assert items["cls_loss"] < bce_items["cls_loss"]  # QFL down-weights the easy negatives BCE sums over
    torch.testing.assert_close(items["box_loss"], bce_items["box_loss"])  # same CIoU term


def test_aux_losses_are_gain_weighted_and_train_their_blocks():
    batch = {"img": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), "batch_idx": torch.tensor([0.0]), "cls": torch.tensor([[1.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])}
    items = {}
    for gain in (0.01, 0.02):
        torch.manual_seed(0)
        model = _model(moe_balance=gain, align_gain=2 * gain)
        loss, items[gain] = model.loss(batch)
        assert loss.shape == (5,) and torch.isfinite(loss).all()
    torch.testing.assert_close(items[0.02]["moe_loss"], 2 * items[0.01]["moe_loss"])  # same seed, same weights
    torch.testing.assert_close(items[0.02]["align_loss"], 2 * items[0.01]["align_loss"])
    assert items[0.01]["moe_loss"] >= 0.01 * 0.999  # Switch balance loss is >= 1 before its gain
    model.zero_grad()
    loss[3].backward()  # the balance term alone reaches the router's routing scores, but not its temperature
    router = model.model[11].router
    assert router.queries.grad.abs().sum() > 0 and router.phi[0].weight.grad.abs().sum() > 0
    assert router.log_tau.grad is None or router.log_tau.grad.abs().sum() == 0  # flattening P cannot pay it


def test_router_z_loss_is_off_by_default_and_a_gain_turns_it_on():
    batch = {"img": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), "batch_idx": torch.tensor([0.0]),
             "cls": torch.tensor([[1.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])}
    torch.manual_seed(0)
    _, items = _model().loss(batch)
    assert "moe_zloss" not in items  # gain 0: not computed, no results.csv column
    torch.manual_seed(0)
    model = _model(moe_zloss=1e-3)
    loss, items = model.loss(batch)
    assert loss.shape == (6,) and "moe_zloss" in items
    moe = model.model[11]
    cos = moe.saved[0]
    z = torch.logsumexp(cos / moe.router.log_tau.exp(), -1).pow(2).mean()  # ST-MoE: mean(logsumexp(logits)^2)
    torch.testing.assert_close(items["moe_zloss"], 1e-3 * z.detach())
