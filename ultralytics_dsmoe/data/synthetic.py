"""Procedural aluminum-like defect images in YOLO format: the embedded default dataset (no download needed).

Each image is a brushed-aluminum surface (directional streaks, uneven illumination, sensor noise) carrying 1-4
defects of four classes with the scale spread of real foil inspection:

    0 pinhole  tiny dark pit with a bright rim (a few px)        1 scratch  long thin bright/dark line
    2 stain    large soft irregular discolouration               3 crease   wide fold: a light/dark shading band

Every image depends only on ``(seed, split, index)``, so any subset is reproducible and the output is identical
across runs and machines with the same numpy/OpenCV.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

NAMES = ("pinhole", "scratch", "stain", "crease")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def surface(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 brushed-aluminum texture in 0-255."""
    base = rng.uniform(120, 185)
    streaks = rng.normal(0, 1, (h, 1)) * rng.uniform(3, 9)  # rolling direction: horizontal streaks
    streaks = cv2.GaussianBlur(streaks.astype(np.float32), (1, 3), 0)
    fine = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (9, 1), 0) * rng.uniform(2, 5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    light = (np.cos(angle) * xx / w + np.sin(angle) * yy / h) * rng.uniform(-25, 25)  # uneven illumination
    return base + streaks + fine + light + rng.normal(0, 2.0, (h, w)).astype(np.float32)


def _box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Normalised xywh box of the non-zero pixels of a mask, or None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h


def pinhole(img, rng):
    h, w = img.shape
    r = rng.uniform(1.5, max(2.0, 0.012 * min(h, w)))
    c = (int(rng.uniform(r + 2, w - r - 2)), int(rng.uniform(r + 2, h - r - 2)))
    mask = np.zeros_like(img, np.uint8)
    cv2.circle(mask, c, int(round(r + 1.5)), 1, -1)  # box includes the rim
    rim = np.zeros_like(img)
    cv2.circle(rim, c, int(round(r + 1.5)), rng.uniform(25, 45), -1)
    cv2.circle(rim, c, max(1, int(round(r))), -rng.uniform(80, 120), -1)
    img += cv2.GaussianBlur(rim, (3, 3), 0)
    return mask


def scratch(img, rng):
    h, w = img.shape
    length = rng.uniform(0.25, 0.8) * min(h, w)
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    t = np.linspace(-0.5, 0.5, 24)[:, None]
    bend = rng.uniform(-0.08, 0.08) * length * (1 - 4 * t**2)  # slight curvature
    d, n = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    pts = np.clip(np.array([cx, cy]) + t * length * d + bend * n, 0, [w - 1, h - 1]).round().astype(np.int32)
    mask = np.zeros_like(img, np.uint8)
    cv2.polylines(mask, [pts], False, 1, int(rng.integers(1, 3)))
    img += mask * rng.choice([-1, 1]) * rng.uniform(35, 60)
    return mask


def stain(img, rng):
    h, w = img.shape
    rx, ry = rng.uniform(0.08, 0.3) * w, rng.uniform(0.08, 0.3) * h
    cx, cy = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    radii = rng.uniform(0.6, 1.0, 16)  # irregular outline
    pts = np.stack([cx + rx * radii * np.cos(angles), cy + ry * radii * np.sin(angles)], 1).round().astype(np.int32)
    mask = np.zeros_like(img, np.uint8)
    cv2.fillPoly(mask, [pts], 1)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(1.0, 0.08 * min(rx, ry)))
    img -= soft * rng.uniform(25, 55)
    return mask


def crease(img, rng):
    h, w = img.shape
    vertical = rng.random() < 0.5
    span, across = (h, w) if vertical else (w, h)
    pos, width = rng.uniform(0.2, 0.8) * across, rng.uniform(0.02, 0.06) * across
    a, b = sorted(rng.uniform(0, span, 2))
    a, b = (0.0, float(span)) if b - a < 0.4 * span else (a, b)  # creases run most of the frame
    coords = np.arange(across, dtype=np.float32) - pos
    band = np.tanh(coords / (width / 2)) * np.exp(-((coords / width) ** 2)) * rng.uniform(30, 50)
    profile = np.zeros((span, across), np.float32)
    profile[int(a) : int(b)] = band
    mask = np.zeros((span, across), np.uint8)
    mask[int(a) : int(b), max(0, int(pos - width)) : int(pos + width) + 1] = 1
    if not vertical:
        profile, mask = profile.T, mask.T
    img += profile
    return mask


DRAW = (pinhole, scratch, stain, crease)


def make_image(seed: int, split: str, index: int, imgsz: int = 320) -> tuple[np.ndarray, list[tuple]]:
    """One (imgsz, imgsz, 3) uint8 BGR image and its YOLO labels ``(cls, x, y, w, h)``."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    img = surface(rng, imgsz, imgsz)
    labels = []
    for cls in rng.integers(0, len(NAMES), int(rng.integers(1, 5))):
        box = _box(DRAW[cls](img, rng))
        if box is not None:
            labels.append((int(cls), *box))
    gray = np.clip(img, 0, 255).astype(np.uint8)
    tint = np.array([1.0, 1.0, 1.02])[None, None] * rng.uniform(0.97, 1.03, 3)  # slight colour cast
    return np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8), labels


def generate(root: str | Path, seed: int = 0, train: int = 96, val: int = 32, imgsz: int = 320) -> Path:
    """Write ``root/images/{train,val}`` and ``root/labels/{train,val}`` in YOLO format; return ``root``."""
    root = Path(root)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, labels = make_image(seed, split, i, imgsz)
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.png"), img)
            rows = (f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels)
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(rows) + "\n")
    config = dict(seed=seed, train=train, val=val, imgsz=imgsz, names=NAMES)
    (root / "synthetic.json").write_text(json.dumps(config, indent=1))
    return root
