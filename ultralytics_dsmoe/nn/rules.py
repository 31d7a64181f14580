"""Channel rules: how the model-YAML parser derives a DS-MoE block's output channels and constructor arguments.

A rule maps ``(m, c1, args, scale) -> (c2, args)``: ``m`` is the block class; ``c1`` is ``ch[f]``, a list when ``from``
is a list or the source block returns a list; ``scale(c)`` applies the YAML width multiple and ``max_channels`` the way
Ultralytics does for ``Conv``. ``ultralytics_dsmoe.patches.parser`` calls them from inside ``parse_model``.
"""

from __future__ import annotations

from typing import Callable

ChannelRule = Callable[[type, "int | list", list, Callable[[int], int]], tuple]


def same_channels(m, c1, args, scale):
    """Block(c1, *args) keeps the channels of its (first) input."""
    return (c1[0] if isinstance(c1, list) else c1), [c1, *args]


def scaled_output(m, c1, args, scale):
    """Block(c1, c2, *args): args[0] is the output width before the scale's width multiple."""
    c2 = scale(args[0])
    return c2, [c1, c2, *args[1:]]


def listed_output(m, c1, args, scale):
    """Block(c1, *args) returns a list of maps with channels ``m.out_channels``."""
    return list(m.out_channels), [c1, *args]


def hybrid_output(m, c1, args, scale):
    """HybridEncoder(c1, weights, ratio, stem, p2): a list of maps like ``listed_output``; the stem widths (one int or a
    list) are scaled."""
    weights, ratio, stem, p2 = (list(args) + ["auto", 0.5, 0, False][len(args):])[:4]
    stem = [scale(w) for w in stem] if isinstance(stem, (list, tuple)) else scale(stem) if stem else 0
    return list(m.out_channels), [c1, weights, ratio, stem, p2]


def picked_output(m, c1, args, scale):
    """Pick(c1, i) takes element i of a list-returning block."""
    return c1[args[0]], [c1, *args]


def declared_output(m, c1, args, scale):
    """Block(c1, c2, *args) with args[0] an absolute width, not scaled (e.g. the text width)."""
    return args[0], [c1, *args]


def geometry_output(m, c1, args, scale):
    """HyperbolicAlign(c1, n, nc, ...) returns n tangent channels plus nc distance maps."""
    return args[0] + args[1], [c1, *args]
