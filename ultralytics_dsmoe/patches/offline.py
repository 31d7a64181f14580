"""Offline checks: Ultralytics' font check, and its AMP check on DS-MoE models, never touch the network when
Ultralytics is offline. Online, both are Ultralytics' own; so is the AMP check of any model without DS-MoE blocks."""

from __future__ import annotations

import functools
from pathlib import Path

from ultralytics.utils import LOGGER, USER_CONFIG_DIR, WEIGHTS_DIR, checks

from ultralytics_dsmoe.guard import patch_function


def is_offline() -> bool:
    from ultralytics import utils

    return not utils.ONLINE


UNICODE_FONT = "Arial.Unicode.ttf"  # what Ultralytics' Annotator asks for when a label is not ASCII (e.g. 划痕)
CJK_FAMILIES = ("Noto Sans CJK", "Noto Serif CJK", "Source Han Sans", "WenQuanYi", "SimHei", "SimSun",
                "Microsoft YaHei", "PingFang", "Hiragino Sans", "Arial Unicode")


def _check_font(original):
    def check_font(font="Arial.ttf"):
        if is_offline() and not (USER_CONFIG_DIR / Path(font).name).exists():
            return offline_font(Path(font).name)
        return original(font)

    return check_font


def offline_font(name: str) -> Path:
    """A local font instead of Ultralytics' download: a CJK-capable one for non-ASCII labels when the machine has one
    (else a one-time warning naming the file to add), matplotlib's bundled DejaVu Sans otherwise."""
    from matplotlib import font_manager

    if name == UNICODE_FONT:
        found = cjk_font()
        if found is not None:
            return found
        warn_no_cjk_font()
    return Path(font_manager.findfont("DejaVu Sans"))  # bundled with matplotlib: no download needed


def cjk_font() -> Path | None:
    """The first installed font of a family known to cover CJK (matplotlib's font list), or None."""
    from matplotlib import font_manager

    for family in CJK_FAMILIES:
        for entry in font_manager.fontManager.ttflist:
            if entry.name.startswith(family):
                return Path(entry.fname)
    return None


@functools.lru_cache(maxsize=1)
def warn_no_cjk_font() -> None:
    LOGGER.warning(f"No CJK font on this machine and Ultralytics cannot download {UNICODE_FONT} offline: non-Latin "
                   f"class names will render as empty boxes in plots and saved predictions. Put {UNICODE_FONT} (or "
                   f"any CJK TrueType font saved under that name) in {USER_CONFIG_DIR}, or install one (e.g. "
                   "fonts-noto-cjk).")


def _check_amp(original):
    def check_amp(model, *args, **kwargs):
        device = next(model.parameters()).device
        if device.type != "cuda" or not is_offline() or (WEIGHTS_DIR / "yolo26n.pt").is_file() or not is_dsmoe(model):
            return original(model, *args, **kwargs)  # CPU/MPS: False; online, weights present or plain YOLO: stock
        # Offline without the reference weights: instead of a download attempt, check that the model being trained
        # stays finite under fp16 autocast (the failure AMP checks exist to catch).
        import copy

        import torch

        probe = copy.deepcopy(model).eval()
        with torch.no_grad(), torch.autocast("cuda"):
            out = probe(torch.rand(2, 3, 256, 256, device=device))
        finite = all(torch.isfinite(t).all() for t in tensors(out))
        LOGGER.info(f"AMP: offline check on the model itself {'passed' if finite else 'failed: amp disabled'}.")
        return bool(finite)

    return check_amp


def is_dsmoe(model) -> bool:
    """True if the model has a DS-MoE block (the plugin's patches leave other models to Ultralytics)."""
    from ultralytics_dsmoe.nn import BLOCKS

    kinds = tuple(block.cls for block in BLOCKS.values())
    return any(isinstance(m, kinds) for m in model.modules())


def tensors(x):
    """Every tensor in a nested model output."""
    if hasattr(x, "dtype"):
        return [x]
    items = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else []
    return [t for item in items for t in tensors(item)]


def install() -> None:
    patch_function(checks, "check_font", _check_font, ("font",))
    patch_function(checks, "check_amp", _check_amp, ("model",))
