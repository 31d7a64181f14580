"""Stage 5: hyperbolic manifold alignment of visual features with class-text anchors (paper eqs. 9-13).

Poincaré-ball operations (curvature -1) are written by hand rather than taken from geoopt: geoopt does not export
to ONNX (``aten::isclose``) and ``torch.atanh`` does not either. Norms are clamped below the boundary and away from
zero, everything runs in fp32 (also under fp16 autocast), and the tests check these functions against geoopt in fp64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ultralytics.nn.modules import Conv

from .ground import grounding_loss
from .transient import AuxLossBlock

__all__ = ("HyperbolicAlign", "artanh", "class_assignment", "clip_norm", "dist", "expmap0", "logmap", "logmap0",
           "mobius_add", "project")

MIN_NORM = 1e-6
MAX_NORM = 1 - 1e-5  # points stay strictly inside the unit ball (fp32 resolves 1 - 1e-5 from 1)
CLIP_RADIUS = 2.3  # Euclidean norm of features before Exp_0: ball radius tanh(2.3) = 0.980 (Guo et al., CVPR 2022)
ANCHOR_RADIUS = 49.0  # |x| <= 49 keeps eq. 10's x / (1 + |x|) within the same 0.98 ball


def artanh(x: torch.Tensor) -> torch.Tensor:
    """artanh on [0, MAX_NORM], as 0.5 * (log1p(x) - log1p(-x)) (exportable, unlike torch.atanh)."""
    x = x.clamp(-MAX_NORM, MAX_NORM)
    return 0.5 * (torch.log1p(x) - torch.log1p(-x))


def clip_norm(x: torch.Tensor, radius: float = CLIP_RADIUS, dim: int = -1) -> torch.Tensor:
    """Scale vectors longer than ``radius`` down to it ("clipped hyperbolic" features)."""
    norm = _norm(x, dim)
    return x * (norm.clamp_max(radius) / norm)


def _norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.norm(dim=dim, keepdim=True).clamp_min(MIN_NORM)


def project(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pull points with norm >= MAX_NORM back inside the ball."""
    norm = _norm(x, dim)
    return x * (norm.clamp_max(MAX_NORM) / norm)


def expmap0(v: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Eq. 9: Exp_0(v) = tanh(|v|) v / |v|."""
    norm = _norm(v, dim)
    return project(torch.tanh(norm) * v / norm, dim)


def logmap0(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log_0(x) = artanh(|x|) x / |x|."""
    norm = _norm(x, dim)
    return artanh(norm) * x / norm


def mobius_add(x: torch.Tensor, y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x (+) y = ((1 + 2<x,y> + |y|^2) x + (1 - |x|^2) y) / (1 + 2<x,y> + |x|^2 |y|^2)."""
    xy = (x * y).sum(dim, keepdim=True)
    x2, y2 = (x * x).sum(dim, keepdim=True), (y * y).sum(dim, keepdim=True)
    num = (1 + 2 * xy + y2) * x + (1 - x2) * y
    return num / (1 + 2 * xy + x2 * y2).clamp_min(MIN_NORM)


def logmap(p: torch.Tensor, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log_p(x) = (1 - |p|^2) artanh(|-p (+) x|) u / |u|, u = -p (+) x  (2 / lambda_p = 1 - |p|^2)."""
    u = mobius_add(-p, x, dim)
    norm = _norm(u, dim)
    return (1 - (p * p).sum(dim, keepdim=True)) * artanh(norm) * u / norm


def dist(x: torch.Tensor, y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Poincaré distance d_H(x, y) = 2 artanh(|-x (+) y|) (equal to the arccosh form under eq. 12)."""
    return 2 * artanh(_norm(mobius_add(-x, y, dim), dim)).squeeze(dim)


def class_assignment(geo: torch.Tensor, nc: int, log_tau: torch.Tensor) -> torch.Tensor:
    """Stage 5's output G (B, n + nc, H, W) -> a_c(p) = softmax_c(-d_H,c(p) / tau), (B, nc, H, W) in fp32.

    Each pixel's soft assignment to the nc class anchors, from G's last nc channels (the distance maps). The blocks
    that bring the class texts to the pixels after Stage 5 (Stage 6's text context, the pixel text of Stages 8-9) use
    it, each with its own learned temperature tau = exp(log_tau)."""
    return F.softmax(-geo[:, -nc:].float() / log_tau.exp(), dim=1)


class HyperbolicAlign(AuxLossBlock):
    """Stage 5: lift visual features onto the Poincaré ball, anchor class texts there, fuse by log maps (eqs. 9-11).

        v       = W_v F_cs                                   (B, n, H, W) per-pixel visual vectors
        P(v)    = Exp_0(v)                                   eq. 9
        t_c     = Proj(W_h T_hat_c),  Proj(x) = x/(1+|x|)    eq. 10, (B, nc, n)
        d_c     = d_H(P(v), t_c)                             eq. 12's distance, (B, nc, H, W)
        a_c     = softmax_c(-d_c / tau)
        g       = Log_0(P(v)) + beta * sum_c a_c Log_{t_c}(P(v))      eq. 11
        output  = [g, d]                                     (B, n + nc, H, W)

    Reading of eq. 11: with C anchors but one pixel, each anchor's log map is weighted by the pixel's soft assignment
    to that class (nearest anchors dominate). ``Log_0(Exp_0(v)) = v`` up to clamping, so the text-dependent term is
    the informative one. The distance maps are returned with ``g``: Stage 6 uses them as geometry context (its
    dilation rule r = 1 + d_H / delta and its per-pixel text context). Eqs. 12-13 are properties the paper claims for
    a trained model, not operations; they are not enforced.

    Grounding (model-YAML gain ``ground_gain``, results.csv column ``ground_loss``; 0 = off, the default until
    measured): eq. 11's soft assignment a_c is trained as a class posterior, the cross-entropy of its logits
    ``-d_c / tau`` against the class of the box covering each cell (``nn.ground``). Without it, anchor c is tied to
    class c by nothing: the prompts initialise anchors that the network may relabel at will.

    Numerics: the block runs in fp32 with autocast off. Visual vectors are clipped to Euclidean norm 2.3 before
    Exp_0 and anchors to the same ball radius (0.98) before eq. 10's projection: near the boundary artanh' grows
    like 1 / (1 - |x|^2) and its gradients overflow fp16 and spike in fp32 (feature clipping, Guo et al. CVPR 2022).

    ``manifold='euclidean'`` is the ablation without hyperbolic geometry (paper Tables 2/4/9, columns B-C): the same
    block with Exp/Log maps replaced by the identity, differences for log maps and |x - t| for distances.

    Args:
        c1: [visual channels C, text width d].
        n: dimension of the ball.
        nc: number of classes (anchors).
        beta: initial weight of the anchored log maps (learnable).
        manifold: 'poincare' or 'euclidean'.
    """

    AUX_LOSSES = {"ground_loss": ("ground_gain", 0.0)}

    def __init__(self, c1: list[int], n: int = 64, nc: int = 80, beta: float = 1.0, manifold: str = "poincare"):
        super().__init__()
        if manifold not in {"poincare", "euclidean"}:
            raise ValueError(f"HyperbolicAlign: manifold must be 'poincare' or 'euclidean', got {manifold!r}")
        c, d = c1
        self.nc, self.hyperbolic = nc, manifold == "poincare"
        self.visual = Conv(c, n, 1, act=False)  # W_v + BN: unit-scale output; fuse() folds the BN
        self.anchor = nn.Linear(d, n)  # W_h of eq. 10
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.log_tau = nn.Parameter(torch.zeros(()))  # assignment temperature, init 1

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        """[F_cs (B, C, H, W), T_hat (B, nc, d)] -> (B, n + nc, H, W)."""
        f, t = x
        with torch.autocast(f.device.type, enabled=False):
            return self.align(f.float(), t.float()).to(f.dtype)

    def align(self, f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = clip_norm(self.visual(f), dim=1).unsqueeze(1)  # (B, 1, n, H, W)
        anchors = clip_norm(self.anchor(t), ANCHOR_RADIUS)  # (B, nc, n)
        anchors = (anchors / (1 + anchors.norm(dim=-1, keepdim=True)))[..., None, None]  # eq. 10, (B, nc, n, 1, 1)
        if self.hyperbolic:
            p = expmap0(v, dim=2)
            d = dist(anchors, p, dim=2)  # (B, nc, H, W)
            logs = logmap(anchors, p, dim=2)  # (B, nc, n, H, W)
            base = logmap0(p, dim=2)
        else:
            d = (v - anchors).norm(dim=2)
            logs, base = v - anchors, v
        logits = -d / self.log_tau.exp()  # (B, nc, H, W)
        self.remember(logits)
        a = F.softmax(logits, dim=1).unsqueeze(2)  # (B, nc, 1, H, W)
        g = base.squeeze(1) + self.beta * (a * logs).sum(1)  # eq. 11, (B, n, H, W)
        return torch.cat([g, d], 1)

    def aux_losses(self, terms=None, batch=None) -> dict[str, torch.Tensor]:
        return {} if batch is None else {"ground_loss": grounding_loss(self.saved[0], batch)}  # needs the boxes
