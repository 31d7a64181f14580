"""Box grounding (nn/ground.py): per-cell targets against a loop reference, the loss against cross-entropy by hand, and
the term in a model: off by default, on with ground_gain, reaching both class assignments it grounds."""

import torch
import torch.nn.functional as F

from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils import DEFAULT_CFG
from ultralytics_dsmoe.nn.ground import cell_targets, grounding_loss


def _reference_targets(batch, h, w):
    """Cell by cell: the smallest box of the cell's image whose extent holds the cell centre, or that holds the box
    centre in this cell; -1 where none does."""
    out = torch.full((batch["img"].shape[0], h, w), -1, dtype=torch.long)
    for b in range(out.shape[0]):
        for i in range(h):
            for j in range(w):
                best = None
                for n, (x, y, bw, bh) in enumerate(batch["bboxes"].tolist()):
                    if int(batch["batch_idx"][n]) != b:
                        continue
                    inside = abs((j + 0.5) / w - x) <= bw / 2 and abs((i + 0.5) / h - y) <= bh / 2
                    centre = min(int(y * h), h - 1) == i and min(int(x * w), w - 1) == j
                    if (inside or centre) and (best is None or bw * bh < best[0]):
                        best = (bw * bh, int(batch["cls"][n]))
                if best is not None:
                    out[b, i, j] = best[1]
    return out


def _batch(n=12, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(n, 2, generator=g) ** 2 * 0.6 + 0.005  # pinholes through large creases
    return {"img": torch.zeros(b, 3, 64, 64), "batch_idx": torch.randint(0, b, (n,), generator=g).float(),
            "cls": torch.randint(0, 4, (n, 1), generator=g).float(), "bboxes": torch.cat([xy, wh], 1)}


def test_cell_targets_match_a_cell_by_cell_reference():
    for seed, (h, w) in enumerate([(8, 8), (5, 7), (16, 12)]):
        batch = _batch(seed=seed)
        assert torch.equal(cell_targets(batch, (h, w)), _reference_targets(batch, h, w))
    pinhole = {"img": torch.zeros(1, 3, 64, 64), "batch_idx": torch.zeros(1), "cls": torch.tensor([[3.0]]),
               "bboxes": torch.tensor([[0.52, 0.27, 0.01, 0.01]])}  # smaller than a cell, centre in cell (1, 2)
    t = cell_targets(pinhole, (4, 4))
    assert t[0, 1, 2] == 3 and (t >= 0).sum() == 1
    empty = {**pinhole, "batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
    assert (cell_targets(empty, (4, 4)) == -1).all()


def test_grounding_loss_is_cross_entropy_over_covered_cells():
    batch = _batch(n=4, b=2, seed=3)
    logits = torch.randn(2, 4, 6, 6, requires_grad=True)
    t = _reference_targets(batch, 6, 6)
    keep = t >= 0
    by_hand = -F.log_softmax(logits, 1).permute(0, 2, 3, 1)[keep].gather(1, t[keep][:, None]).mean()
    loss = grounding_loss(logits, batch)
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    grad = logits.grad.permute(0, 2, 3, 1)  # (B, H, W, nc)
    assert grad[~keep].abs().sum() == 0 and (grad[keep].abs().sum(1) > 0).all()  # uncovered cells are ignored
    none = {**batch, "batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
    zero = grounding_loss(logits, none)
    assert zero.item() == 0 and zero.requires_grad  # in the graph: DDP ranks backpropagate the same parameters


def test_grounding_loss_with_a_background_class_weighs_covered_and_uncovered_cells_alike():
    batch = _batch(n=4, b=2, seed=3)
    logits = torch.randn(2, 5, 6, 6, requires_grad=True)  # 4 classes + the background
    t = _reference_targets(batch, 6, 6)
    keep = t >= 0
    ce = -F.log_softmax(logits, 1).permute(0, 2, 3, 1).gather(3, t.clamp_min(0)[..., None]).squeeze(3)
    bg = -F.log_softmax(logits, 1)[:, 4]
    by_hand = ce[keep].mean() + bg[~keep].mean()
    loss = grounding_loss(logits, batch, background=True)
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    assert (logits.grad.abs().sum(1) > 0).all()  # every cell now teaches something
    none = {**batch, "batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
    torch.testing.assert_close(grounding_loss(logits, none, background=True), -F.log_softmax(logits, 1)[:, 4].mean())


def _model(d):
    model = DetectionModel(d, nc=2, verbose=False)
    model.args = DEFAULT_CFG
    return model


def test_ground_gain_turns_the_term_on_and_trains_both_class_assignments():
    batch = {"img": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
             "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [0.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.2, 0.3, 0.05, 0.05]])}
    torch.manual_seed(0)
    _, items = _model("dsmoe-n.yaml").loss(batch)
    assert "ground_loss" not in items  # default gain 0: not computed, no results.csv column
    d = yaml_model_load("dsmoe-n.yaml")
    d["ground_gain"] = 0.5
    for row in d["backbone"]:
        if row[2] == "SparseMoE":
            row[3] = [512, 32, 5, "switch", 2, 1]  # per region, with the router's class affinity
    torch.manual_seed(0)
    model = _model(d)
    loss, items = model.loss(batch)
    align, moe = model.model[9], model.model[11]
    expected = 0.5 * (grounding_loss(align.saved[0], batch) + grounding_loss(moe.ground_logits, batch)) / 2
    torch.testing.assert_close(items["ground_loss"], expected.detach())
    assert moe.ground_logits.shape == align.saved[0].shape  # the regions' logits back on the whole P4 map
    names = list(items)
    loss[names.index("ground_loss")].backward()
    assert align.anchor.weight.grad.abs().sum() > 0 and moe.router.anchor.weight.grad.abs().sum() > 0
