"""The upgrade path's one new block: DS-MoE stages enter a YOLO backbone as a residual branch closed by a zero
convolution."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ("ResidualGate",)


class ResidualGate(nn.Module):
    """``y = x + Z F(x)``, with ``Z`` a 1x1 convolution (no bias) whose weights start at zero.

    ``x`` is the YOLO trunk's map (for example the backbone's P4 output) and ``F(x)`` the DS-MoE stages computed from
    it. With ``Z = 0`` the block returns ``x`` unchanged, so a YOLO checkpoint upgraded with DS-MoE stages first computes
    exactly what it computed before. This is ControlNet's zero convolution (Zhang et al. 2023), chosen over a
    per-channel gain ``g`` (ReZero, LayerScale with a zero start) by measurement: ``dL/dg_c = sum dL/dy_c * F_c`` only
    pairs each trunk channel with the same branch channel, and on aluminum the gain stayed at |g| ~ 0.002 through a
    10-epoch fine-tune, so the stages never trained. ``dL/dZ = sum dL/dy F^T`` pairs every branch channel with every
    trunk channel: ``Z`` starts as the best linear read-out of ``F`` and the stages train from the second step on.

    Args:
        c1: [trunk channels, branch channels] (they may differ: ``Z`` maps the branch onto the trunk).
    """

    def __init__(self, c1: list[int]):
        super().__init__()
        c, cb = c1
        self.zero = nn.Conv2d(cb, c, 1, bias=False)
        nn.init.zeros_(self.zero.weight)

    def __setstate__(self, state: dict) -> None:
        """Unpickling an upgrade made with the first gate (0.2.0 development), ``y = x + g * F(x)``: ``Z = diag(g)``."""
        super().__setstate__(state)
        if "gain" in self._parameters:
            g = self._parameters.pop("gain").detach()
            self.zero = nn.Conv2d(len(g), len(g), 1, bias=False).to(g)
            self.zero.weight.data.copy_(torch.diag(g).view(len(g), len(g), 1, 1))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        """[trunk x (B, C, H, W), branch F(x) (B, Cb, H, W)] -> (B, C, H, W)."""
        trunk, branch = x
        return trunk + self.zero(branch.to(trunk.dtype))
