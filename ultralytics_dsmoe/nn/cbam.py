"""Stage 4: CBAM refinement of the encoder features (paper eqs. 6-8)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ("DSCBAM",)

# Narrowest hidden layer of the shared channel MLP. CBAM's reduction 16 leaves 8 units at 128 channels (dsmoe-n's P3);
# narrower inputs keep 8 rather than a 2-4 unit bottleneck. Not from the paper, which gives no width.
MIN_HIDDEN = 8


class DSCBAM(nn.Module):
    """Channel then spatial attention in the paper's form (eqs. 6-8).

        Gamma_c(F) = sigma(MLP(GAP(F)) + MLP(GMP(F)))                      eq. 7, one MLP shared by both poolings
        Gamma_s(F) = sigma(Conv7x7([AvgPool_c(F), MaxPool_c(F)]))           eq. 8, pooling across channels
        F_cs       = F' * Gamma_s(F'),  F' = F * Gamma_c(F)                  eq. 6

    Reading of eq. 6: ``Gamma_c(F) (x) Gamma_s(F)`` read literally is an attention map without ``F``; the sequential
    form of the original CBAM (Woo et al. 2018), which eq. 6 abbreviates, is used. (Ultralytics' own ``CBAM`` uses
    average pooling and a single 1x1 conv in its channel branch, so it is not this block; hence the name ``DSCBAM``.
    Model YAMLs and checkpoints of plugin 0.1.0 name it ``CBAM`` and still load: ``nn.RENAMED``.)

    Args:
        c1: channels (kept).
        reduction: hidden width of the shared MLP is ``c1 // reduction`` (at least ``MIN_HIDDEN``).
        kernel: spatial attention kernel (paper: 7).
    """

    def __init__(self, c1: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        hidden = max(c1 // reduction, MIN_HIDDEN)
        self.mlp = nn.Sequential(nn.Conv2d(c1, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, c1, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 1, 1) eq. 7."""
        return torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W) eq. 8."""
        return torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)
