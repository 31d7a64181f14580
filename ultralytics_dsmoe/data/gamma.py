"""The paper's photometric pre-processing (sec. 4.4, eq. 35): the gamma transform s = c * r^gamma.

``r`` is the pixel value scaled to [0, 1], ``c = 1`` and ``gamma = 1.5`` in the paper; gamma > 1 darkens the mid
tones and stretches the bright range where aluminum and steel defects sit. It is a dataset property: a data yaml
key ``gamma: 1.5`` applies it to every image the trainer and validator read, and checkpoints trained with it
record it so ``yolo predict`` applies the same transform (``ultralytics_dsmoe.patches.trainer`` wires both).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def _lut(gamma: float) -> np.ndarray:
    """(256,) uint8 table of round(255 * (r / 255) ** gamma)."""
    return np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)


def checked_gamma(value) -> float | None:
    """The ``gamma:`` value of a data yaml as a float, None when absent; a clear error for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 10.0:
        raise ValueError(f"Data yaml 'gamma: {value!r}' must be a number in (0, 10] (the paper uses 1.5), or absent.")
    return float(value)


def apply_gamma(im: np.ndarray, gamma: float) -> np.ndarray:
    """s = r^gamma on an image, in place for uint8 (a lookup table) and float images in [0, 255]; returns ``im``."""
    if im.dtype == np.uint8:
        im[...] = _lut(gamma)[im]
    else:
        np.copyto(im, (255.0 * (np.clip(im, 0, 255) / 255.0) ** gamma).astype(im.dtype))
    return im
