"""Quality Focal Loss on TAL's IoU-aware targets, plus Ultralytics' CIoU and DFL box terms (paper sec. 3.5).

Paper eq. 32: ``QFL(σ) = -α_t |y - σ|^β [(1 - y) log(1 - σ) + y log σ]`` with ``α_t = y α + (1 - y)(1 - α)``.
``y`` is the soft, IoU-aware target that Ultralytics' TaskAlignedAssigner already produces (``target_scores``),
exactly the "smoothed label" QFL was designed for (Li et al., Generalized Focal Loss). The box terms stay
Ultralytics' ``BboxLoss``: CIoU (eqs. 33-34) + DFL.

Gains come from the model YAML (``qfl_alpha``, ``qfl_beta``, ``qfl_gain``) on top of the trainer's ``box``, ``cls``,
``dfl`` hyperparameters. The paper's ``2α·QFL + λ·CIoU`` (α=0.45, λ=0.05) fixes only a ratio between terms that
Ultralytics normalises differently (per target-score sum), so ``qfl_alpha`` defaults to the paper's α and the
absolute gains keep Ultralytics' defaults; ``qfl_gain`` rescales the classification term because QFL's down-
weighting of easy negatives makes it far smaller than BCE at equal ``cls`` gain.

``dsmoe.yaml`` selects it only with ``loss: qfocal`` (the paper's full model: ``dsmoe-ablation-f.yaml``): trained
from scratch, dsmoe-n scored 4.8 ± 1.6 pp mAP50-95 lower with QFL than with Ultralytics' BCE (BENCHMARKS.md), so BCE
is the default. Our reading: while the boxes are poor, TAL's IoU-aware targets are near 0 and QFL's |y - σ|^β factor
leaves the classifier almost no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ultralytics.utils.loss import v8DetectionLoss

from ultralytics_dsmoe.util import model_cfg

__all__ = ("LOSSES", "AuxLosses", "QualityFocalDetectionLoss", "QualityFocalLoss")


class QualityFocalLoss(nn.Module):
    """Element-wise QFL on logits with soft targets (paper eq. 32), reduction left to the caller.

    Args:
        alpha: α of the balance factor α_t = yα + (1 - y)(1 - α); None disables it.
        beta: focusing exponent on |y - σ|.
    """

    def __init__(self, alpha: float | None = 0.45, beta: float = 2.0):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(..., nc) logits and targets in [0, 1] -> (..., nc) losses."""
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = bce * (logits.sigmoid() - target).abs().pow(self.beta)
        if self.alpha is not None:
            loss = loss * (target * self.alpha + (1 - target) * (1 - self.alpha))
        return loss


class QualityFocalDetectionLoss(v8DetectionLoss):
    """``v8DetectionLoss`` with QFL as its classification term; keys stay box_loss, cls_loss, dfl_loss."""

    def __init__(self, model, tal_topk: int = 10, tal_topk2: int | None = None):
        super().__init__(model, tal_topk, tal_topk2)
        cfg = model_cfg(model)
        self.qfl = QualityFocalLoss(cfg.get("qfl_alpha", 0.45), cfg.get("qfl_beta", 2.0))
        self.bce = self._scaled_qfl  # its only classification term (checked by patches.criterion at install)
        self.qfl_gain = float(cfg.get("qfl_gain", 1.0))

    def _scaled_qfl(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.qfl(logits, target) * self.qfl_gain


LOSSES = {"qfocal": QualityFocalDetectionLoss}


class AuxLosses:
    """Wrap a detection criterion and add the blocks' auxiliary losses (``nn.transient.AuxLossBlock``) as extra terms.

    Each term is the mean of that term over the model's blocks that have it, times its gain (the model-YAML key the
    block names, else the block's default). It is computed from the same forward pass the criterion scores, in training
    and validation alike, so train/ and val/ columns match in results.csv. Everything else (``update``, attributes) is
    the wrapped criterion's.
    """

    def __init__(self, criterion, model):
        from ultralytics_dsmoe.nn.transient import AuxLossBlock

        self.criterion = criterion
        cfg, found = model_cfg(model), {}
        for m in model.modules():
            if isinstance(m, AuxLossBlock):
                for column, (key, default) in m.AUX_LOSSES.items():
                    found.setdefault(column, (float(cfg.get(key, default)), []))[1].append(m)
        # (column, gain, blocks); a term whose gain is 0 is off: not computed, no column
        self.terms = [(column, gain, modules) for column, (gain, modules) in found.items() if gain != 0]

    def __getattr__(self, name):
        if name == "criterion":  # not yet set (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.criterion, name)

    def __call__(self, preds, batch):
        loss, items = self.criterion(preds, batch)  # (box, cls, dfl) * batch size, {name: detached term}
        if not self.terms:
            return loss, items
        batch_size = batch["img"].shape[0]
        wanted = {}  # block -> the terms that are on (a gain of 0 is never computed)
        for column, _, modules in self.terms:
            for m in modules:
                wanted.setdefault(m, set()).add(column)
        values = {m: m.aux_losses(columns, batch) for m, columns in wanted.items()}  # each block's terms, once
        extra = []
        for column, gain, modules in self.terms:
            term = gain * torch.stack([values[m][column] for m in modules]).mean().to(loss.dtype)
            extra.append(term)
            items = {**items, column: term.detach()}
        return torch.cat([loss, torch.stack(extra) * batch_size]), items
