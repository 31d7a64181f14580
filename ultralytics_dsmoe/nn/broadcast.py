"""Stage 6: space broadcasting, text- and geometry-modulated deformable sampling at three scales (paper eqs. 14-19)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ultralytics.nn.modules import Conv

from .hyperbolic import class_assignment

__all__ = ("SpaceBroadcast",)

# Narrowest geometry (d_e = n // 2) and value (c_v = c2 // 2) widths. The shipped configs never reach them (n = 64
# gives d_e = 32; c2 >= 128 gives c_v >= 64); they keep small custom configs from a 1-4 channel bottleneck.
MIN_GEOMETRY, MIN_VALUE = 8, 16
# Dilation r = 1 + sum_c a_c d_H,c / delta. Two points of the clipped ball (radius 0.98) are at most 2 artanh(0.9998)
# = 9.2 apart, so delta = 4 at initialisation maps the whole range to r in [1, 3.3], inside the clamp. The clamp bounds
# the reach of the coarsest grid (s = 0.5, spacing 2 r) to 8 cells, a 17 x 17 window around each pixel. Not measured.
DELTA_INIT, MAX_DILATION = 4.0, 4.0


class SpaceBroadcast(nn.Module):
    """Deformable sampling whose offsets, modulation and dilation come from Stage 5 geometry and the class texts.

        Gamma     = Conv1x1(Log_0 G)                        eq. 15, (B, d_e, H, W), d_e = n // 2; G's g part is
                                                            already a tangent vector, so Log_0 is the identity
        V         = Conv1x1(F_cs (+) Gamma)                 eq. 16 before the upsampling, (B, c_v, H, W)
        tau_p     = sum_c a_c(p) W_t T_hat_c                per-pixel text context, a = softmax_c(-d_H / tau)
        dp_{s,k}  = Phi_s(AvgPool(G) (+) tau_p)             eq. 18, Phi = depthwise-separable conv, zero-initialised
        m_{s,k}   = sigma(W_g^(k) [Gamma * W tau_p])        eq. 19, DCNv2-style modulation per sampling point
        r(p)      = 1 + sum_c a_c(p) d_H,c(p) / delta       dilation from hyperbolic distance, delta learnable
        F_b       = psi( sum_{s in {0.5,1,2}} sum_k w_{s,k} m_{s,k} V(p + r p_k / s + dp_{s,k}) )      eqs. 14, 17

    Readings: ``Upsample_s`` followed by a unit-spaced 3x3 kernel (eq. 16-17) samples the original map on a grid of
    spacing 1/s, so the three scales are realised as three sampling grids on the H x W map (no 4x upsampled copy), and
    their outputs are aligned for the sum of eq. 14. The dilation rule ``r_s = floor(1 + d_H/delta)`` loses its floor
    to stay differentiable and is clipped to [1, MAX_DILATION]. The geometry-guided kernel of eq. 14 is a learnable depthwise
    kernel over the 3 x 9 sampling points, modulated by eq. 19, then a pointwise CBS ``psi``. Sampling uses
    ``grid_sample`` (bilinear, zero padding), which exports to ONNX (GridSample, opset >= 16).

    Args:
        c1: [C of F_cs, n + nc of G, text width d].
        c2: output channels.
        nc: number of classes (the last nc channels of G are distance maps).
        scales: sampling scales s of eq. 14.
        k: kernel size.
    """

    def __init__(self, c1: list[int], c2: int, nc: int = 80, scales: tuple = (0.5, 1.0, 2.0), k: int = 3):
        super().__init__()
        c, cg, d = c1
        self.n, self.nc = cg - nc, nc
        de, cv = max(self.n // 2, MIN_GEOMETRY), max(c2 // 2, MIN_VALUE)
        self.scales, self.points = tuple(scales), k * k
        sk = len(self.scales) * self.points
        self.gamma = nn.Conv2d(self.n, de, 1)  # eq. 15
        self.value = Conv(c + de, cv, 1)  # eq. 16
        self.text = nn.Linear(d, de)  # W_t: text into the geometry width
        self.offset = nn.Sequential(  # Phi of eq. 18: depthwise-separable
            nn.Conv2d(cg + de, cg + de, 3, padding=1, groups=cg + de), nn.Conv2d(cg + de, 2 * sk, 1)
        )
        nn.init.zeros_(self.offset[1].weight), nn.init.zeros_(self.offset[1].bias)  # start from the regular grid
        self.mask = nn.Conv2d(de, sk, 1)  # W_g of eq. 19
        self.kernel = nn.Parameter(torch.full((cv, sk), 1.0 / sk))  # depthwise weights over the sampling points
        self.psi = Conv(cv, c2, 1)
        self.log_delta = nn.Parameter(torch.tensor(DELTA_INIT).log())
        self.log_tau = nn.Parameter(torch.zeros(()))
        r = torch.arange(k, dtype=torch.float32) - k // 2
        grid = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).view(-1, 2).flip(-1)  # (k*k, 2) as (x, y)
        steps = torch.cat([grid / s for s in self.scales])  # (S*k*k, 2): spacing 1/s per scale
        self.register_buffer("steps", steps, persistent=False)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        """[F_cs (B, C, H, W), G (B, n + nc, H, W), T_hat (B, nc, d)] -> (B, c2, H, W)."""
        f, geo, t = x
        b, _, h, w = f.shape
        g, dmap = geo[:, : self.n], geo[:, self.n :].float()
        a = class_assignment(geo, self.nc, self.log_tau)  # (B, nc, H, W) soft class assignment
        gamma = self.gamma(g)  # (B, d_e, H, W)
        text = torch.einsum("bchw,bcd->bdhw", a.to(f.dtype), self.text(t))  # (B, d_e, H, W)
        v = self.value(torch.cat([f, gamma], 1))  # (B, c_v, H, W)
        offsets = self.offset(torch.cat([F.avg_pool2d(geo, 3, 1, 1, count_include_pad=False), text], 1))
        mask = torch.sigmoid(self.mask(gamma * text))  # (B, S*k*k, H, W)
        dil = (1 + (a * dmap).sum(1, keepdim=True) / self.log_delta.exp()).clamp(1, MAX_DILATION)  # (B, 1, H, W)

        # Sampling positions in pixels, point-major, one plane per axis: q = p + r(p) * step_{s,k} + dp_{s,k}(p)
        xs = torch.arange(w, device=f.device, dtype=torch.float32)  # (W,)
        ys = torch.arange(h, device=f.device, dtype=torch.float32)[:, None]  # (H, 1)
        off = offsets.float().view(b, -1, 2, h, w)  # (B, S*k*k, 2, H, W) as (x, y)
        qx = xs + dil * self.steps[:, 0, None, None] + off[:, :, 0]  # (B, 1, H, W) * (S*k*k, 1, 1) -> (B, S*k*k, H, W)
        qy = ys + dil * self.steps[:, 1, None, None] + off[:, :, 1]
        wf, hf = xs.new_tensor(1.0) * w, xs.new_tensor(1.0) * h  # traced sizes stay symbolic
        grid = torch.stack([(2 * qx + 1) / wf - 1, (2 * qy + 1) / hf - 1], -1)  # align_corners=False normalisation
        cv, sk = self.kernel.shape
        samples = F.grid_sample(v, grid.view(b, sk * h, w, 2).to(v.dtype), mode="bilinear", align_corners=False)
        samples = samples.view(b, cv, sk, h, w) * mask.unsqueeze(1)  # (B, c_v, S*k*k, H, W), modulated (eq. 19)
        # The depthwise kernel over the sampling points: per channel c, sum_k w_{c,k} * sample_k, a grouped 1x1 conv
        y = F.conv2d(samples.view(b, cv * sk, h, w), self.kernel.to(samples.dtype).view(cv, sk, 1, 1), groups=cv)
        return self.psi(y)  # (B, c2, H, W)
