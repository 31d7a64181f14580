"""Stage 3 backbone: the MobileSAM image encoder (TinyViT) as YAML blocks.

The encoder is the TinyViT-5M that MobileSAM distilled from SAM's ViT-H, exactly as Ultralytics ships it
(``ultralytics.models.sam.modules.tiny_encoder``), so ``mobile_sam.pt`` image-encoder weights load strictly.
``MobileSAMEncoder`` runs it at the input resolution (the paper's setting); ``HybridEncoder`` runs it on a
reduced-resolution copy beside a light full-resolution convolutional stem (ViT-Adapter's spatial prior), at a
fraction of the cost. Both return a list of feature maps; ``Pick`` rows select them by index in the YAML.
``AnisotropicDSConv`` is the Stage 3 adapter the paper adds on each encoder level (eqs. 3-5).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ultralytics.nn.modules import C2f, Conv
from ultralytics.utils import LOGGER, WEIGHTS_DIR
from ultralytics.utils.torch_utils import fuse_conv_and_bn

from ultralytics_dsmoe.guard import PatchError

__all__ = ("AnisotropicDSConv", "HybridEncoder", "MobileSAMEncoder", "Pick", "SpatialPrior", "fold_batchnorms")

# MobileSAM's TinyViT configuration (ultralytics/models/sam/build.py::build_mobile_sam).
TINYVIT_MOBILESAM = dict(
    img_size=1024,
    in_chans=3,
    num_classes=1000,
    embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2],
    num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7],
    mlp_ratio=4.0,
    drop_rate=0.0,
    drop_path_rate=0.0,
    use_checkpoint=False,
    mbconv_expand_ratio=4.0,
    local_conv_size=3,
    layer_lr_decay=0.8,
)
MOBILESAM_FILE = "mobile_sam.pt"
# SAM normalises 0-255 pixels with these; YOLO feeds 0-1 RGB, so they are divided by 255 below.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def find_mobilesam_weights(weights: str | Path | None) -> Path | None:
    """Resolve the ``weights`` argument of ``MobileSAMEncoder`` to a file, or None for random initialisation.

    Args:
        weights: ``"auto"`` uses ``mobile_sam.pt`` from the working or Ultralytics weights directory, else fetches it
            into the weights directory while Ultralytics is online (as ``yolo26n.pt`` is fetched), else initialises
            randomly with a warning; ``"download"`` fetches it or fails; ``"none"``/None forces random
            initialisation; anything else is a file that must exist (a bare name is also looked up in the weights
            directory).
    """
    if weights is None or str(weights).lower() in {"none", "scratch", "random"}:
        return None
    key = str(weights).lower()
    name = MOBILESAM_FILE if key in {"auto", "download"} else str(weights)
    for candidate in (Path(name), WEIGHTS_DIR / name):
        if candidate.is_file():
            return candidate
    if key == "download":
        from ultralytics.utils.downloads import attempt_download_asset

        return Path(attempt_download_asset(WEIGHTS_DIR / MOBILESAM_FILE))
    if key == "auto":
        return fetch_mobilesam()
    raise FileNotFoundError(
        f"MobileSAM weights '{weights}' not found (looked in '{Path.cwd()}' and '{WEIGHTS_DIR}'). Give an existing "
        f"path, put {MOBILESAM_FILE} in one of those folders, use 'download' when online, or 'none' to train "
        "the encoder from scratch."
    )


MOBILESAM_HOST = ("github.com", 443)  # where Ultralytics' asset download starts
PROBE_SECONDS = 5.0


def fetch_mobilesam() -> Path | None:
    """``auto`` without a local file: ``mobile_sam.pt`` through Ultralytics' asset download into its weights directory,
    or None after one warning when Ultralytics is offline, GitHub does not answer within ``PROBE_SECONDS`` or the
    download fails (bounded: a reachability probe first, then at most one retry)."""
    import socket

    from ultralytics import utils
    from ultralytics.utils.downloads import attempt_download_asset

    if not utils.ONLINE:
        return warn_random_init("Ultralytics is offline")
    try:
        socket.create_connection(MOBILESAM_HOST, timeout=PROBE_SECONDS).close()
    except OSError as e:
        return warn_random_init(f"{MOBILESAM_HOST[0]} unreachable: {e}")
    target = WEIGHTS_DIR / MOBILESAM_FILE
    LOGGER.info(f"MobileSAMEncoder: downloading {MOBILESAM_FILE} (MobileSAM's pretrained TinyViT) to {target}")
    try:
        file = Path(attempt_download_asset(target, retry=1))
    except Exception as e:  # Ultralytics raises ConnectionError, but a proxy or disk can fail in other ways
        return warn_random_init(f"download failed: {e}")
    return file if file.is_file() else warn_random_init("download failed")


@functools.lru_cache(maxsize=None)
def warn_random_init(reason: str) -> None:
    """One warning per reason and process (the trainer builds the model more than once)."""
    LOGGER.warning(
        f"MobileSAMEncoder: {MOBILESAM_FILE} not available ({reason}), so the TinyViT encoder starts from random "
        "weights. Training it from scratch needs far more data and epochs than starting from MobileSAM's "
        f"pretraining (the paper's setting). Fixes: put {MOBILESAM_FILE} (from Ultralytics' assets release) in "
        f"{WEIGHTS_DIR} or the working directory, run once online, or give its path in the model yaml; "
        "`weights: none` there makes training from scratch explicit and silences this warning."
    )
    return None


def load_image_encoder_state(encoder: nn.Module, file: Path) -> None:
    """Load the ``image_encoder.*`` tensors of a MobileSAM checkpoint strictly into a TinyViT."""
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    prefix = "image_encoder."
    encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise ValueError(f"'{file}' holds no '{prefix}*' tensors: it is not a MobileSAM checkpoint.")
    encoder.load_state_dict(encoder_state, strict=True)


class MobileSAMEncoder(nn.Module):
    """MobileSAM TinyViT encoder returning ``[P2/4 (64 ch), P3/8 (128 ch), P4/16 (320 ch)]`` (paper eq. 3).

    MobileSAM keeps stride 16 in its last two stages (no stride-32 output); the YAML adds the stride-32 stage.
    Paper eq. 3 describes the encoder as four downsampling levels: TinyViT realises levels s4 (patch embed + MBConv),
    s8 (stage 1) and s16 (stages 2-3). The SAM decoder neck and the classification head are dropped.

    The forward pass walks TinyViT's own modules (so ``mobile_sam.pt`` weights load unchanged) but derives every
    window and padding size from the input tensor's shape, instead of TinyViT's ``set_imgsz`` module state: the
    traced graph stays valid for any input size (dynamic ONNX export), and numerics equal TinyViT's own forward.
    Window attention runs through ``F.scaled_dot_product_attention`` with the relative-position bias gathered from
    its parameters on every call (TinyViT caches it in eval mode, a cache that goes stale under ``.half()``).

    With ``fit_windows``, each attention window shrinks to the most even split of the map into windows no larger
    than TinyViT's (a 5 x 5 map gets one 5 x 5 window instead of one zero-padded 14 x 14 window; 20 x 20 gets four
    10 x 10 instead of four padded 14 x 14), using the same relative-position biases for the offsets it spans.
    Zero-padded tokens are attended to in TinyViT, so this changes numerics near padded borders; on small maps it
    removes most of the attention cost (at 80 px input, 8x fewer tokens in the 6 blocks of stage 2).

    Args:
        c1: input channels (must be 3).
        weights: see ``find_mobilesam_weights``.
        fit_windows: fit attention windows to the map instead of zero-padding to TinyViT's window size.
    """

    out_channels = (64, 128, 320)  # fixed by MobileSAM's TinyViT: read by the YAML channel rule
    fit_windows = False  # class default: checkpoints pickled before the argument existed keep TinyViT's windows

    def __init__(self, c1: int = 3, weights: str | None = "auto", fit_windows: bool = False):
        super().__init__()
        from ultralytics.models.sam.modules.tiny_encoder import TinyViT  # lazy: circular at plugin-import time

        if c1 != 3:
            raise ValueError(f"MobileSAMEncoder takes 3-channel RGB input, got {c1} channels.")
        vit = TinyViT(**TINYVIT_MOBILESAM)
        check_tinyvit(vit)
        file = find_mobilesam_weights(weights)
        if file is None:
            LOGGER.info("MobileSAMEncoder: random init.")
        else:
            load_image_encoder_state(vit, file)
            LOGGER.info(f"MobileSAMEncoder: loaded image-encoder weights from {file}")
        self.vit, self.fit_windows = vit, bool(fit_windows)
        del vit.neck, vit.head, vit.norm_head  # unused by detection: no dead parameters
        self.register_buffer("mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1) / 255, persistent=False)
        self.register_buffer("std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1) / 255, persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in 0-1 -> [(B, 64, H/4, W/4), (B, 128, H/8, W/8), (B, 320, H/16, W/16)]; H, W % 32 == 0."""
        l0, l1, l2, l3 = self.vit.layers
        x = self.vit.patch_embed((x - self.mean) / self.std)  # (B, 64, H/4, W/4)
        for mbconv in l0.blocks:
            x = mbconv(x)
        p2 = x
        fit = self.fit_windows
        x = _vit_stage(l1, _merge(l0.downsample, x), fit)  # (B, 128, H/8, W/8)
        p3 = x
        x = _vit_stage(l2, _merge(l1.downsample, x), fit)  # (B, 160, H/16, W/16)
        x = _vit_stage(l3, _merge(l2.downsample, x), fit)  # (B, 320, H/16, W/16): the last merge has stride 1
        return [p2, p3, x]


def _merge(merging: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyViT PatchMerging on a (B, C, H, W) map -> (B, C', H', W') map."""
    return merging.conv3(merging.act(merging.conv2(merging.act(merging.conv1(x)))))


def _vit_stage(layer: nn.Module, x: torch.Tensor, fit: bool = False) -> torch.Tensor:
    """The TinyViTBlocks of one BasicLayer on a (B, C, H, W) map (its downsample is applied by the caller). The
    blocks pass tokens (B, H*W, C) from one to the next, as in TinyViT: one layout change in and one out per stage."""
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    for block in layer.blocks:
        tokens = _vit_block(block, tokens, h, w, fit)
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def _vit_block(blk: nn.Module, tokens: torch.Tensor, h, w, fit: bool = False) -> torch.Tensor:
    """``TinyViTBlock.forward`` on (B, H*W, C) tokens of an h x w map, with window geometry taken from the map's size
    instead of module state (traceable for any size).

    Identical numerics without ``fit``: TinyViT also zero-pads to whole windows before attention and crops after.
    Padding by 0 when a side already fits is a no-op, so there is no branch on the shape. With ``fit``, windows are
    ``wh x ww`` (see ``MobileSAMEncoder``).
    """
    b, _, c = tokens.shape
    ws = blk.window_size
    wh, ww = (_fitted(h, ws), _fitted(w, ws)) if fit else (ws, ws)
    pad_b, pad_r = (wh - h % wh) % wh, (ww - w % ww) % ww
    win = F.pad(tokens.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))  # (B, pH, pW, C)
    nh, nw = (h + pad_b) // wh, (w + pad_r) // ww
    win = win.view(b, nh, wh, nw, ww, c).transpose(2, 3).reshape(b * nh * nw, wh * ww, c)
    bias_idx = _window_bias_index(blk.attn.attention_bias_idxs, ws, wh, ww) if fit else blk.attn.attention_bias_idxs
    win = _window_attention(blk.attn, win, bias_idx)  # (B*nh*nw, wh*ww, C), TinyViT's relative position biases
    win = win.view(b, nh, nw, wh, ww, c).transpose(2, 3).reshape(b, nh * wh, nw * ww, c)[:, :h, :w]
    tokens = tokens + win.reshape(b, h * w, c)
    x = blk.local_conv(tokens.transpose(1, 2).reshape(b, c, h, w))  # depthwise 3x3 + BN
    tokens = x.flatten(2).transpose(1, 2)
    return tokens + blk.mlp(tokens)  # (B, HW, C)


def _fitted(n, ws: int):
    """Side of the most even split of ``n`` cells into windows of at most ``ws``: ceil(n / ceil(n / ws))."""
    windows = (n + ws - 1) // ws
    return (n + windows - 1) // windows


def _window_bias_index(idx: torch.Tensor, ws: int, wh, ww) -> torch.Tensor:
    """TinyViT's (ws^2, ws^2) relative-offset index restricted to a wh x ww window (its top-left corner).

    Offsets inside a smaller window are a subset of those in the full one, so each pair keeps its learned bias."""
    cells = (torch.arange(wh, device=idx.device)[:, None] * ws + torch.arange(ww, device=idx.device)).flatten()
    return idx[cells][:, cells]  # (wh*ww, wh*ww)


def _window_attention(attn: nn.Module, x: torch.Tensor, bias_idx: torch.Tensor) -> torch.Tensor:
    """TinyViT ``Attention.forward`` on (B, N, C) windows, through fused scaled-dot-product attention.

    Same computation as TinyViT's: ``softmax(q k^T * scale + bias) v`` with the learned bias per head and relative
    offset. The bias is gathered from ``attention_biases`` in every mode, so there is no eval-mode cache to keep in
    step with ``.half()``/``.to()``; in an exported graph the gather is folded into a constant.
    """
    b, n, _ = x.shape
    qkv = attn.qkv(attn.norm(x)).view(b, n, attn.num_heads, -1).transpose(1, 2)  # (B, heads, N, 2 key_dim + d)
    q, k, v = qkv.split([attn.key_dim, attn.key_dim, attn.d], dim=3)  # (B, heads, N, .)
    bias = attn.attention_biases[:, bias_idx].to(q.dtype)  # (heads, N, N)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)  # (B, heads, N, d)
    return attn.proj(y.transpose(1, 2).reshape(b, n, attn.dh))


# What `_vit_block` and `_window_attention` read from TinyViT's modules: checked once per encoder, so a changed
# upstream TinyViT fails at build time with a clear message instead of deep inside a forward pass.
TINYVIT_BLOCK_ATTRS = ("window_size", "attn", "local_conv", "mlp")
TINYVIT_ATTENTION_ATTRS = ("norm", "qkv", "proj", "num_heads", "key_dim", "d", "dh", "scale", "attention_biases",
                           "attention_bias_idxs")


def check_tinyvit(vit: nn.Module) -> None:
    """Raise ``PatchError`` unless ``vit`` has the module layout this file's forward walks."""
    layers = getattr(vit, "layers", None)
    if getattr(vit, "patch_embed", None) is None or layers is None or len(layers) != 4:
        raise PatchError("TinyViT no longer has `patch_embed` and four `layers`")
    for layer in layers[1:]:
        for blk in layer.blocks:
            missing = [a for a in TINYVIT_BLOCK_ATTRS if not hasattr(blk, a)]
            missing += [f"attn.{a}" for a in TINYVIT_ATTENTION_ATTRS if not hasattr(getattr(blk, "attn", None), a)]
            if missing:
                raise PatchError(f"TinyViTBlock no longer has {missing}")
    for merging in (layer.downsample for layer in layers[:3]):
        if not all(hasattr(merging, a) for a in ("conv1", "conv2", "conv3", "act")):
            raise PatchError("TinyViT PatchMerging no longer has conv1, conv2, conv3 and act")


def stem_widths(widths: int | list[int]) -> list[int]:
    """``SpatialPrior`` widths at strides 2, 4, 8 (, 16): an int c means YOLOv8's (c, 2c, 4c, 8c)."""
    widths = [widths, 2 * widths, 4 * widths, 8 * widths] if isinstance(widths, int) else [int(w) for w in widths]
    if len(widths) not in (3, 4) or min(widths) < 1:
        raise ValueError(f"HybridEncoder stem must be one width or 3-4 widths (strides 2, 4, 8 [, 16]), got {widths}.")
    return widths


class SpatialPrior(nn.Module):
    """Full-resolution convolutional stem of ``HybridEncoder`` (ViT-Adapter's spatial prior module, in YOLO blocks).

    YOLOv8's first stages: a stride-2 Conv, then per level a stride-2 Conv and a C2f, at strides 4, 8 and 16 (or
    4 and 8 when ``widths`` stops at P3/8). The maps from level ``first`` on are projected by a 1x1 Conv + BN to the
    TinyViT level they are added to.

    Args:
        c1: input channels.
        widths: one int c for YOLOv8's widths (c, 2c, 4c, 8c) at strides 2, 4, 8, 16, or those widths as a list;
            a list of three stops the stem at P3/8.
        c_out: channels of the three TinyViT levels.
        first: first level that gets a projection (1 skips P2/4, for models whose neck does not use it).
    """

    def __init__(self, c1: int, widths: int | list[int], c_out: tuple[int, ...], first: int = 0):
        super().__init__()
        widths = stem_widths(widths)
        self.first = first
        w = widths[1]  # stride 4
        self.levels = nn.ModuleList(
            [nn.Sequential(Conv(c1, widths[0], 3, 2), Conv(widths[0], w, 3, 2), C2f(w, w, 1, True))]
            + [nn.Sequential(Conv(a, b, 3, 2), C2f(b, b, 1, True)) for a, b in zip(widths[1:], widths[2:])]
        )
        self.proj = nn.ModuleList(Conv(a, b, 1, act=False) for a, b in zip(widths[1 + first :], c_out[first:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, c1, H, W) -> maps at H/4, H/8 (, H/16): projected to ``c_out`` from level ``first`` on, raw before it."""
        maps = []
        for level in self.levels:
            x = level(x)
            maps.append(x)
        return maps[: self.first] + [proj(m) for proj, m in zip(self.proj, maps[self.first :])]


class HybridEncoder(nn.Module):
    """Stage 3, fast: MobileSAM TinyViT on a ``ratio``-scaled copy of the image plus a full-resolution conv stem.

    A ViT's cost grows with the square of its input side (TinyViT: 27.6 GFLOPs at 640 px, 7.6 at 320), while small
    defects need full-resolution detail. Following ViT-Adapter (Chen et al., ICLR 2023), the semantic path (TinyViT,
    ``mobile_sam.pt`` weights, loaded strictly) sees the image at ``ratio`` times its size, and a light convolutional
    stem (``SpatialPrior``) sees it at full size. Each TinyViT level is resized to the stem's grid and added to the
    stem's projected map:

        v_l = TinyViT_l(Resize_r(x))                        l = P2/4, P3/8, P4/16 (64, 128, 320 ch)
        P_l = Up(v_l, size of s_l) + Proj_l(s_l),   s_l = Stem_l(x)    (P_l = Up(v_l) where the stem stops short)

    ViT-Adapter's injector is cross-attention; here fusion is addition after a 1x1 Conv + BN, which costs 0.3
    GFLOPs at 640 and exports anywhere. P2/4 gets stem detail only with ``p2`` (the P2 detection head); otherwise
    it is the resized TinyViT map, so a neck that does not use it leaves no unused parameters. The reduced-resolution
    TinyViT fits its attention windows to the smaller maps (``MobileSAMEncoder(fit_windows=True)``). ``ratio=1`` with
    ``stem=0`` is exactly ``MobileSAMEncoder``.

    Args:
        c1: input channels (must be 3).
        weights: MobileSAM weights, see ``find_mobilesam_weights``.
        ratio: TinyViT input size relative to the image, in (0, 1].
        stem: the stem's widths (``SpatialPrior``; the YAML scales each like a Conv's c2): one int c for YOLOv8's
            (c, 2c, 4c, 8c) at strides 2-16, or the list of them; three widths stop it at P3/8. 0 = no stem.
        p2: add stem detail to the P2/4 output too.
    """

    out_channels = MobileSAMEncoder.out_channels

    def __init__(self, c1=3, weights: str | None = "auto", ratio: float = 0.5, stem: int | list = 16, p2: bool = False):
        super().__init__()
        if not 0 < ratio <= 1:
            raise ValueError(f"HybridEncoder ratio must be in (0, 1], got {ratio}.")
        self.ratio = float(ratio)
        self.sam = MobileSAMEncoder(c1, weights, fit_windows=ratio < 1 or bool(stem))
        self.stem = SpatialPrior(c1, stem, self.out_channels, first=0 if p2 else 1) if stem else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in 0-1 -> [(B, 64, H/4, W/4), (B, 128, H/8, W/8), (B, 320, H/16, W/16)]."""
        vit = self.sam(x if self.ratio == 1 else F.interpolate(x, scale_factor=self.ratio, mode="bilinear"))
        if self.stem is None and self.ratio == 1:  # the paper's encoder, untouched
            return vit
        h, w = x.shape[-2:]
        detail = [] if self.stem is None else self.stem(x)  # maps before stem.first: raw, used for their size only
        first = self.stem.first if detail else len(vit)
        grid = [d.shape[-2:] for d in detail] + [(h // s, w // s) for s in (4, 8, 16)[len(detail) :]]
        return [_resize(v, g) + (detail[i] if first <= i < len(detail) else 0)
                for i, (v, g) in enumerate(zip(vit, grid))]


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of a (B, C, h, w) map to ``size`` (a copy when it already has that size)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def fold_batchnorms(module: nn.Module) -> nn.Module:
    """Fold each BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` of ``module`` into that conv.

    This covers TinyViT's ``Conv2d_BN`` pairs, which Ultralytics' ``fuse()`` does not know (it folds its own ``Conv``
    blocks, which the plugin's blocks use), and the plain conv + BN pairs of checkpoints from plugin 0.1.0. The
    BatchNorm is replaced by ``nn.Identity``; call in eval mode.
    """
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a], seq._modules[b] = fuse_conv_and_bn(conv, bn), nn.Identity()
    return module


class AnisotropicDSConv(nn.Module):
    """Stage 3 adapter on one encoder level: anisotropic factorised DSConv (eq. 4) + gradient-aware resolution (eq. 5).

    Eq. 3 writes each encoder level as ``psi_l(DSConv_l(phi_l(I)))``. ``phi_l`` is TinyViT's own downsampling; this
    block adds ``DSConv_l`` and ``psi_l`` as a residual adapter, so pretrained MobileSAM features pass through intact:

        y   = psi( sum_{i=1..n} D_r(K_kx1^(i)) o D_r(K_1xk^(i)) (x) )     eq. 4: depthwise k x 1 then 1 x k, dilation
                                                                           r = 2^(l-1); psi = pointwise conv + BN + ReLU6
        a   = clamp(log2(1 + E_3x3|grad x| / theta), 0, 1)                eq. 5, soft: log2 s_l before the floor
        out = x + (1 - a) * y + a * Up(AvgPool_2(y))

    Reading of eq. 5: ``s_l = 2^floor(log2(1 + g/theta))`` picks stride 1 where the mean gradient magnitude ``g`` is
    below ``theta`` and stride >= 2 above it. Data-dependent striding cannot be batched or exported, so the stride is
    realised as a per-pixel soft gate between the full-resolution response and its 2x2-pooled (coarse) version,
    with ``a`` the unfloored exponent clipped to [0, 1]. ``g`` is the 3x3 mean of the Sobel gradient magnitude of the
    channel-mean of ``x``; ``theta`` (0.25 in the paper, whose scale assumes image intensities) is learnable here
    because feature magnitudes differ per level. The paper's text says the opposite direction ("smaller s_l for
    high-frequency regions") from its equation; the equation is followed.

    The n factorised terms are evaluated as the one depthwise k x k kernel they add up to: the composition of a
    k x 1 and a 1 x k depthwise conv (zero padding, same dilation) is the conv with their outer product, so
    ``sum_i K_kx1^(i) o K_1xk^(i)`` is a rank-n k x k kernel per channel. Same result and the same 2kn parameters, but
    one dilated depthwise conv instead of 2n, whose backward pass is about twice as fast on CPU.

    Args:
        c1: channels (kept).
        level: encoder level l (stride 2^(l+1)): the dilation is 2^(l-1).
        k: kernel size of the factorised kernels (paper: 3).
        n: number of factorised k x 1 o 1 x k terms in eq. 4.
        theta: initial texture sensitivity of eq. 5.
    """

    def __init__(self, c1: int, level: int = 2, k: int = 3, n: int = 2, theta: float = 0.25):
        super().__init__()
        r = 2 ** (level - 1)
        pad = r * (k // 2)
        self.terms = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c1, c1, (k, 1), padding=(pad, 0), dilation=(r, 1), groups=c1, bias=False),  # D(K_kx1)
                nn.Conv2d(c1, c1, (1, k), padding=(0, pad), dilation=(1, r), groups=c1, bias=False),  # D(K_1xk)
            )
            for _ in range(n)
        )
        self.psi = Conv(c1, c1, 1, act=nn.ReLU6())  # pointwise conv + BN + ReLU6; fuse() folds the BN
        self.log_theta = nn.Parameter(torch.tensor(float(theta)).log())
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        self.register_buffer("sobel", torch.stack([sobel, sobel.T]).unsqueeze(1), persistent=False)  # (2, 1, 3, 3)

    def kernel(self) -> torch.Tensor:
        """(C, 1, k, k) depthwise kernel of eq. 4's sum: sum_i K_kx1^(i) K_1xk^(i) (outer product per channel)."""
        return sum(kx1.weight * k1x.weight for kx1, k1x in self.terms)  # (C, 1, k, 1) * (C, 1, 1, k)

    def resolution_gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W) soft log2 s_l of eq. 5 in [0, 1] (1 = coarse)."""
        m = F.pad(x.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate")  # the frame is not an edge
        grad = F.conv2d(m, self.sobel.to(x.dtype))  # (B, 2, H, W)
        g = F.avg_pool2d(grad.norm(dim=1, keepdim=True), 3, 1, 1, count_include_pad=False)  # E_3x3 |grad|
        return torch.log2(1 + g / self.log_theta.exp()).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        kx1 = self.terms[0][0]  # dilation and padding as built (blocks pickled by older versions included)
        y = self.psi(F.conv2d(x, self.kernel().to(x.dtype), None, 1, (kx1.padding[0], kx1.padding[0]),
                              (kx1.dilation[0], kx1.dilation[0]), x.shape[1]))  # eq. 4
        coarse = F.interpolate(F.avg_pool2d(y, 2, 2, ceil_mode=True), size=y.shape[-2:], mode="nearest")
        a = self.resolution_gate(x)
        return x + (1 - a) * y + a * coarse


class Pick(nn.Module):
    """Select one tensor from a block that returns a list (e.g. ``MobileSAMEncoder``); channels are derived.

    Args:
        c1: the channel list of the input block (filled in by the YAML parser).
        index: which list element to return.
    """

    def __init__(self, c1: list[int], index: int):
        super().__init__()
        self.index = index

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[self.index]
