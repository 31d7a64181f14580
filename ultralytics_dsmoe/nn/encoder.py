"""Stage 3 backbone: the MobileSAM image encoder (TinyViT) as a YAML block.

The encoder is the TinyViT-5M that MobileSAM distilled from SAM's ViT-H, exactly as Ultralytics ships it
(``ultralytics.models.sam.modules.tiny_encoder``), so ``mobile_sam.pt`` image-encoder weights load strictly.
It returns a list of feature maps; ``Pick`` rows select them by index in the YAML.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ultralytics.utils import LOGGER, WEIGHTS_DIR

__all__ = ("MobileSAMEncoder", "Pick")

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
        weights: ``"auto"`` uses ``mobile_sam.pt`` if it is in the working or Ultralytics weights directory and
            otherwise initialises randomly (never downloads); ``"download"`` fetches it through Ultralytics'
            asset download; ``"none"``/None forces random initialisation; anything else is a file that must exist
            (a bare name is also looked up in the weights directory).
    """
    if weights is None or str(weights).lower() in {"none", "scratch", "random"}:
        return None
    if str(weights).lower() == "download":
        from ultralytics.utils.downloads import attempt_download_asset

        return Path(attempt_download_asset(MOBILESAM_FILE))
    name = MOBILESAM_FILE if str(weights).lower() == "auto" else str(weights)
    for candidate in (Path(name), WEIGHTS_DIR / name):
        if candidate.is_file():
            return candidate
    if str(weights).lower() == "auto":
        return None
    raise FileNotFoundError(
        f"MobileSAM weights '{weights}' not found (looked in '{Path.cwd()}' and '{WEIGHTS_DIR}'). Give an existing "
        f"path, put {MOBILESAM_FILE} in one of those folders, use 'download' when online, or 'none' to train "
        "the encoder from scratch."
    )


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
    """MobileSAM TinyViT encoder returning ``[P3/8 (128 ch), P4/16 (320 ch)]``.

    MobileSAM keeps stride 16 in its last two stages (no stride-32 output); the YAML adds the stride-32 stage.
    Paper eq. 3 describes the encoder as four downsampling levels: TinyViT realises levels s4 (patch embed),
    s8 (stage 1) and s16 (stages 2-4). The SAM decoder neck and the classification head are dropped.

    Args:
        c1: input channels (must be 3).
        weights: see ``find_mobilesam_weights``.
    """

    out_channels = (128, 320)  # fixed by MobileSAM's TinyViT: read by the YAML channel rule

    def __init__(self, c1: int = 3, weights: str | None = "auto"):
        super().__init__()
        from ultralytics.models.sam.modules.tiny_encoder import TinyViT  # lazy: circular at plugin-import time

        if c1 != 3:
            raise ValueError(f"MobileSAMEncoder takes 3-channel RGB input, got {c1} channels.")
        vit = TinyViT(**TINYVIT_MOBILESAM)
        file = find_mobilesam_weights(weights)
        if file is None:
            LOGGER.info(f"MobileSAMEncoder: random init ({MOBILESAM_FILE} not found or not requested).")
        else:
            load_image_encoder_state(vit, file)
            LOGGER.info(f"MobileSAMEncoder: loaded image-encoder weights from {file}")
        self.vit = vit
        del vit.neck, vit.head, vit.norm_head  # unused by detection: no dead parameters
        self.register_buffer("mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1) / 255, persistent=False)
        self.register_buffer("std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1) / 255, persistent=False)

    def _apply(self, fn, recurse=True):
        """Refresh TinyViT's eval-mode cache of attention biases after ``.half()``/``.to()`` (else dtype mismatch)."""
        super()._apply(fn, recurse)
        if not self.training:
            self.vit.train(False)  # Attention.train(False) re-caches `ab` from the converted parameters
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in 0-1 -> [(B, 128, H/8, W/8), (B, 320, H/16, W/16)]; H, W multiples of 32."""
        b, _, h, w = x.shape
        self.vit.set_imgsz([h, w])  # TinyViT keeps window geometry as module state
        x = self.vit.patch_embed((x - self.mean) / self.std)  # (B, 64, H/4, W/4)
        p3 = self.vit.layers[0](x)  # (B, H/8*W/8, 128) tokens
        x = p3
        for layer in self.vit.layers[1:]:
            x = layer(x)  # -> (B, H/16*W/16, 320)
        return [_tokens_to_map(p3, h // 8, w // 8), _tokens_to_map(x, h // 16, w // 16)]


def _tokens_to_map(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, C) row-major tokens -> (B, C, h, w)."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


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
