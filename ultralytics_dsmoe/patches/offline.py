"""Offline checks: Ultralytics' font check and AMP check never touch the network when Ultralytics is offline."""

from __future__ import annotations

from pathlib import Path

from ultralytics.utils import LOGGER, USER_CONFIG_DIR, WEIGHTS_DIR, checks

from ultralytics_dsmoe.guard import patch_function


def is_offline() -> bool:
    from ultralytics import utils

    return not utils.ONLINE


def _check_font(original):
    def check_font(font="Arial.ttf"):
        if is_offline() and not (USER_CONFIG_DIR / Path(font).name).exists():
            from matplotlib import font_manager

            return Path(font_manager.findfont("DejaVu Sans"))  # bundled with matplotlib: no download needed
        return original(font)

    return check_font


def _check_amp(original):
    def check_amp(model, *args, **kwargs):
        device = next(model.parameters()).device
        if device.type != "cuda" or not is_offline() or (WEIGHTS_DIR / "yolo26n.pt").is_file():
            return original(model, *args, **kwargs)  # CPU/MPS: False; online or weights present: stock check
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


def tensors(x):
    """Every tensor in a nested model output."""
    if hasattr(x, "dtype"):
        return [x]
    items = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else []
    return [t for item in items for t in tensors(item)]


def install() -> None:
    patch_function(checks, "check_font", _check_font, ("font",))
    patch_function(checks, "check_amp", _check_amp, ("model",))
