"""The guard every patch goes through: ``PatchError``, a marker of the plugin's own, and the shape checks.

A patch (``ultralytics_dsmoe.patches``), or a block that walks Ultralytics modules (the TinyViT walk in ``nn/encoder.py``),
must fail loudly, at install or build time and naming the installed Ultralytics, when the code it relies on has changed
shape; it must never silently skip itself or silently do something else. A leaf module: blocks and patches import it.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from typing import Callable

from ultralytics import __version__ as ULTRALYTICS_VERSION

from ultralytics_dsmoe.meta import SUPPORTED

MARK = "_dsmoe_original"  # set on every replacement the plugin installs; holds the replaced object


class PatchError(RuntimeError):
    """The installed Ultralytics (or its TinyViT) does not have the shape this plugin relies on."""

    def __init__(self, what: str):
        super().__init__(
            f"ultralytics-dsmoe cannot patch ultralytics {ULTRALYTICS_VERSION} (supported: {SUPPORTED}): {what}. "
            f"Install a supported ultralytics, or set ULTRALYTICS_DSMOE_AUTOLOAD=0 to use Ultralytics without DS-MoE."
        )


def is_patched(obj) -> bool:
    """Whether ``obj`` is a replacement installed by this plugin (its own marker, not any ``__wrapped__``)."""
    return MARK in getattr(obj, "__dict__", {})


def require(obj, attrs: tuple[str, ...], what: str) -> None:
    """Raise ``PatchError`` unless ``obj`` has every attribute in ``attrs``."""
    missing = [a for a in attrs if not hasattr(obj, a)]
    if missing:
        raise PatchError(f"{what} no longer has {missing}")


def source_of(fn: Callable) -> str:
    """The dedented source of ``fn``, or ``PatchError`` when it is unavailable (e.g. an install without .py files)."""
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as e:
        raise PatchError(f"the source of {getattr(fn, '__qualname__', fn)} is unavailable ({e})") from e


def require_source(fn: Callable, snippets: tuple[str, ...]) -> None:
    """Raise ``PatchError`` unless the source of ``fn`` contains every snippet (code the plugin relies on)."""
    src = source_of(fn)
    missing = [s for s in snippets if s not in src]
    if missing:
        raise PatchError(f"{fn.__qualname__} no longer contains {missing}")


def patch_function(owner, name: str, make_wrapper: Callable, params: tuple[str, ...]) -> None:
    """Replace ``owner.name`` by ``make_wrapper(original)`` everywhere Ultralytics imported it (idempotent).

    ``owner`` is a module or a class (a method is replaced on the class itself). ``params`` are parameter names the
    original must accept; a mismatch raises ``PatchError``.
    """
    original = getattr(owner, name, None)
    if original is None or not callable(original):
        raise PatchError(f"{owner.__name__}.{name} is missing")
    if is_patched(original):
        return  # already installed
    missing = [p for p in params if p not in inspect.signature(original).parameters]
    if missing:
        raise PatchError(f"{owner.__name__}.{name} no longer takes {missing}")
    wrapper = make_wrapper(original)
    setattr(wrapper, MARK, original)
    setattr(owner, name, wrapper)
    for mod in list(sys.modules.values()):  # aliases made by `from ... import name` before the patch
        if getattr(mod, "__name__", "").startswith("ultralytics.") and vars(mod).get(name) is original:
            setattr(mod, name, wrapper)
