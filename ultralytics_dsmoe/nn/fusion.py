"""Stages 9-10: heterogeneous expert ensembling and differentiable feature aggregation (paper eqs. 25-27)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ultralytics.nn.modules import Conv

from .hyperbolic import class_assignment
from .transient import AuxLossBlock

__all__ = ("ExpertEnsemble", "FeatureAggregate")


class ExpertEnsemble(nn.Module):
    """Stage 9 (eq. 25): ``F_e = sum_{r=1..3} D_r(F_g) * K  +  Conv3x3(F_b (+) Expand(T_hat))``.

    Readings: ``F_g`` (the 'gating-guided features from Stage 7') is the gated expert mixture F_MoE. The spatial
    stream is three dilated depthwise 3x3 convolutions (rates 1, 2, 3) summed, then a pointwise CBS for the kernel K.
    For the cross-modal stream the class texts are projected to a small width, expanded over H x W and concatenated
    to F_b before a 3x3 CBS. Eq. 25 is a sum, so F_e has c2 channels (the text's 'Cg + Cb' cannot hold for a sum;
    eq. 27 also needs F_e and F_MoE to have equal widths).

    Expand, two readings, chosen by the inputs:
    - [F_MoE, F_b, T_hat]: the class-mean text ``W mean_c T_hat_c``, the same vector at every pixel of every image.
      T_hat does not depend on the image, so this is a learned constant map: a bias, not guidance.
    - [F_MoE, F_b, T_hat, G] (pixel text): ``sum_c a_c(p) W T_hat_c`` with ``a = softmax_c(-d_H / tau)`` from
      Stage 5's distance maps in G (tau learned, initialised at 1), as Stage 6 forms its text context: each pixel
      carries the text of the classes it is near. A uniform assignment gives back the class mean.

    Args:
        c1: [channels of F_MoE, channels of F_b, text width d] or the same with G's channels (n + nc) appended.
        c2: output channels.
        dt: width of the projected text. The paper gives none; 32 is 20% of the 3x3 conv's input at dsmoe-n (F_b: 128).
    """

    def __init__(self, c1: list[int], c2: int, dt: int = 32):
        super().__init__()
        cg, cb, d = c1[:3]
        self.dilated = nn.ModuleList(nn.Conv2d(cg, cg, 3, padding=r, dilation=r, groups=cg, bias=False) for r in (1, 2, 3))
        self.spatial = Conv(cg, c2, 1)
        self.text = nn.Linear(d, dt)
        self.cross = Conv(cb + dt, c2, 3)
        if len(c1) == 4:  # pixel text: the temperature of the class assignment
            self.log_tau = nn.Parameter(torch.zeros(()))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        """[F_MoE (B, cg, H, W), F_b (B, cb, H, W), T_hat (B, nc, d)[, G (B, n + nc, H, W)]] -> F_e (B, c2, H, W)."""
        fg, fb, t, *geo = x
        spatial = self.spatial(sum(conv(fg) for conv in self.dilated))
        if geo:  # (B, dt, H, W): sum_c a_c(p) W T_hat_c
            a = class_assignment(geo[0], t.shape[1], self.log_tau)
            text = torch.einsum("bchw,bcd->bdhw", a.to(fb.dtype), self.text(t).to(fb.dtype))
        else:  # (B, dt, H, W): W mean_c T_hat_c at every pixel
            text = self.text(t.mean(1)).to(fb.dtype)[..., None, None].expand(-1, -1, *fb.shape[2:])
        return spatial + self.cross(torch.cat([fb, text], 1))


class FeatureAggregate(AuxLossBlock):
    """Stage 10 (eqs. 26-27): ``F_out = Conv1x1(F_e * sigma(W_a F_MoE))`` and the gradient-alignment loss.

    ``L_align = mean_{ij} (1 - cos(d s_ij / d F_e,ij , d s_ij / d F_MoE,ij))`` with ``s_ij = sum_o F_out,o,ij``, the
    channel sum of the output at pixel (i, j). Eq. 27 writes ``mean cos(...)`` as the loss, which minimising would
    anti-align the two gradients; '1 - cos' is the reading that matches 'maintains feature compatibility'. The
    gradients have a closed form, so no double backward is needed:

        d s / d F_e   = u * sigma(A),                         u_c = sum_o W_o[o, c],   A = W_a F_MoE + b_a
        d s / d F_MoE = W_a^T (u * F_e * sigma(A)(1 - sigma(A)))

    It is the auxiliary loss ``align_loss``, weighted by the model-YAML key ``align_gain``.

    Args:
        c1: [channels of F_e, channels of F_MoE] (equal: eq. 27 compares gradients in the two spaces).
        c2: output channels (paper: floor((Ce + Cm) / 2), i.e. the same width).
    """

    # The paper gives eq. 27 no weight; 0.05 keeps the term (at most 2) below the detection losses. Not tuned.
    AUX_LOSSES = {"align_loss": ("align_gain", 0.05)}

    def __init__(self, c1: list[int], c2: int):
        super().__init__()
        ce, cm = c1
        if ce != cm:
            raise ValueError(f"FeatureAggregate: F_e and F_MoE must have equal channels for eq. 27, got {ce} and {cm}")
        self.attend = nn.Conv2d(cm, ce, 1)  # W_a
        self.out = nn.Conv2d(ce, c2, 1)  # the Conv1x1 of eq. 26
        self.saved = None

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        """[F_e (B, ce, H, W), F_MoE (B, cm, H, W)] -> F_out (B, c2, H, W)."""
        fe, fm = x
        gate = torch.sigmoid(self.attend(fm))
        self.remember(fe, gate)
        return self.out(fe * gate)

    def aux_losses(self, terms=None, batch=None) -> dict[str, torch.Tensor]:
        return {"align_loss": self.align_loss(*self.saved)}  # its one term

    def align_loss(self, fe: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Eq. 27 in closed form: mean over pixels of 1 - cos(grad wrt F_e, grad wrt F_MoE)."""
        u = self.out.weight.sum(0).view(1, -1, 1, 1).float()  # (1, ce, 1, 1)
        fe, gate = fe.float(), gate.float()
        grad_e = u * gate
        grad_m = F.conv2d(u * fe * gate * (1 - gate), self.attend.weight.float().transpose(0, 1))  # W_a^T (.)
        return (1 - F.cosine_similarity(grad_e, grad_m, dim=1, eps=1e-6)).mean()
