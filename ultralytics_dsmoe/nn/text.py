"""Stages 1-2: class-prompt embeddings as model state, and their semantic distillation (paper eqs. 1-2)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ("ClassText", "SemanticDistill")


class ClassText(nn.Module):
    """Stage 1 (eq. 1): ``T = LLM(P) + PositionalEncoding(C, d_t)``, expanded over the batch.

    ``embeddings`` is a ``(nc, d_t)`` buffer holding the frozen language model's embedding of each class prompt. It is
    saved in checkpoints, moved with the model, averaged by the EMA (a no-op for a constant) and exported as a
    constant. Until it is filled from the dataset's prompts it holds fixed pseudo-random unit vectors (seed 0), so
    classes are distinct and a freshly built model is deterministic.

    Reading of eq. 1: the LLM width ``d_t`` (1536 for DeepSeek-R1-Distill-Qwen-1.5B) is projected to the model's text
    width ``d`` by a learnable linear map and a LayerNorm (language models differ wildly in embedding scale) before
    the positional encoding ("learnable trigonometric projections": unit-norm sinusoids of the class index through a
    learnable linear map) is added. At initialisation the encoding's norm is about 1/20 of the text's (LayerNorm gives
    the text norm sqrt(d) = 16 at d = 256; a unit sinusoid through PyTorch's default Linear init comes out near 0.8;
    measured 0.048-0.057 over 20 seeds), so the prompts, not the class index, dominate T. The image input is only used for the
    batch size, device and dtype.

    Args:
        c1: channels of the input feature map (unused).
        d: output text width.
        nc: number of classes.
        d_t: width of the language-model embeddings.
    """

    def __init__(self, c1: int, d: int = 256, nc: int = 80, d_t: int = 1536):
        super().__init__()
        self.register_buffer("embeddings", placeholder_embeddings(nc, d_t))
        self.text_source = None  # {"encoder", "prompts", "names"} once filled from a dataset
        self.proj = nn.Sequential(nn.Linear(d_t, d), nn.LayerNorm(d))  # unit scale whatever the LLM's scale
        self.register_buffer("sinusoids", sinusoids(nc, d), persistent=False)  # (nc, d), recomputed from nc
        self.pos = nn.Linear(d, d)

    def set_text(self, embeddings: torch.Tensor, source: dict) -> None:
        """Fill the buffer with (nc, d) prompt embeddings and record where they came from (saved in checkpoints).

        Encoders narrower than ``d_t`` (e.g. MiniLM, 384) are zero-padded, which leaves ``proj`` acting on their
        dimensions only; wider ones need the YAML row's ``d_t`` set to their width.
        """
        nc, d_t = self.embeddings.shape
        if embeddings.ndim != 2 or embeddings.shape[0] != nc:
            raise ValueError(f"ClassText expects ({nc}, <= {d_t}) embeddings, got {tuple(embeddings.shape)}")
        if embeddings.shape[1] > d_t:
            raise ValueError(
                f"Text encoder '{source.get('encoder')}' gives {embeddings.shape[1]}-d embeddings but ClassText holds "
                f"{d_t}: set the ClassText row's d_t (third argument) in the model yaml to {embeddings.shape[1]}."
            )
        with torch.no_grad():
            self.embeddings.zero_()[:, : embeddings.shape[1]] = embeddings.to(self.embeddings)
        self.text_source = dict(source)

    def is_placeholder(self) -> bool:
        """Whether the buffer still holds the build-time placeholder vectors."""
        return torch.equal(self.embeddings.float().cpu(), placeholder_embeddings(*self.embeddings.shape))

    def text(self) -> torch.Tensor:
        """(nc, d) text tokens T of eq. 1."""
        return self.proj(self.embeddings) + self.pos(self.sinusoids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) feature map -> (B, nc, d) text tokens."""
        t = self.text().to(x.dtype)
        return t.unsqueeze(0).expand(x.shape[0], -1, -1)


def placeholder_embeddings(nc: int, d_t: int) -> torch.Tensor:
    """(nc, d_t) fixed unit vectors used until the real prompt embeddings are filled in."""
    e = torch.randn(nc, d_t, generator=torch.Generator().manual_seed(0))
    return e / e.norm(dim=1, keepdim=True)


def sinusoids(n: int, d: int) -> torch.Tensor:
    """(n, d) transformer sinusoidal encoding of positions 0..n-1, rows scaled to unit norm."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    out = torch.zeros(n, d)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return out / out.norm(dim=1, keepdim=True)


class SemanticDistill(nn.Module):
    """Stage 2 (eq. 2): ``T_hat = LayerNorm(T + MHA(T, T, T))`` with h = 8 heads over the nc class tokens.

    Written out (scaled dot-product attention, no fused kernel) so it traces and exports at any batch size.

    Args:
        c1: text width d (kept).
        heads: attention heads (paper: 8); must divide d.
    """

    def __init__(self, c1: int, heads: int = 8):
        super().__init__()
        if c1 % heads:
            raise ValueError(f"SemanticDistill: text width {c1} is not divisible by {heads} heads.")
        self.heads = heads
        self.qkv = nn.Linear(c1, 3 * c1)
        self.out = nn.Linear(c1, c1)
        self.norm = nn.LayerNorm(c1)

    def attention(self, t: torch.Tensor) -> torch.Tensor:
        """(B, nc, d) -> (B, nc, d) multi-head self-attention MHA(T, T, T)."""
        b, n, d = t.shape  # traced sizes when exporting: shape ops only; the scale below is a Python constant
        qkv = self.qkv(t).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, nc, d/h) each
        attn = (q @ k.transpose(-2, -1) / math.sqrt(self.qkv.in_features // self.heads)).softmax(-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, d))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B, nc, d) -> (B, nc, d)."""
        return self.norm(t + self.attention(t))
