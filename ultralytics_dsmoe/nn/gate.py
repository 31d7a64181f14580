"""The upgrade path's one new block: DS-MoE stages enter a YOLO backbone as a residual branch gated from zero."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ("ResidualGate",)


class ResidualGate(nn.Module):
    """``y = x + g * F(x)``, with ``g`` one learnable gain per channel, initialised to zero.

    ``x`` is the YOLO trunk's map (for example the backbone's P4 output) and ``F(x)`` the DS-MoE stages computed from
    it. With ``g = 0`` the block returns ``x`` unchanged, so a YOLO checkpoint upgraded with DS-MoE stages first computes
    exactly what it computed before (ReZero, Bachlechner et al. 2021; LayerScale, Touvron et al. 2021, with a zero
    start). The first gradient step moves only ``g`` (``dL/dg = sum dL/dy * F(x)``); the stages' own weights receive
    gradient once ``g`` is non-zero, so training can only move the model away from its source as far as that helps.

    Args:
        c1: [trunk channels, branch channels] (equal: the branch is added to the trunk).
    """

    def __init__(self, c1: list[int]):
        super().__init__()
        c, cb = c1
        if c != cb:
            raise ValueError(f"ResidualGate: the branch must have the trunk's {c} channels, got {cb}")
        self.gain = nn.Parameter(torch.zeros(c))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        """[trunk x (B, C, H, W), branch F(x) (B, C, H, W)] -> (B, C, H, W)."""
        trunk, branch = x
        return trunk + self.gain.to(branch.dtype).view(1, -1, 1, 1) * branch
