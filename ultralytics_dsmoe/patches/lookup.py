"""Config lookup: bare ``dsmoe*.yaml`` and shipped dataset names resolve from any directory (a local file of the same
name wins), and ``dsmoe-n.yaml``-style names select their scale."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ultralytics.nn import tasks
from ultralytics.utils import checks

from ultralytics_dsmoe.meta import CFG_DIR, DATA_DIR

from ultralytics_dsmoe.guard import patch_function

SCALE_SUFFIX = r"(?:-|(?<=\d))[nsmlx](\.ya?ml)$"  # dsmoe-n.yaml, dsmoe-full-s.yaml, dsmoe-v8s.yaml, dsmoe-11m.yaml


def shipped_file(file: str) -> Path | None:
    """A bare YAML name shipped with the plugin: ``dsmoe-s.yaml`` -> ``cfg/dsmoe.yaml``, ``dsmoe-v8s.yaml`` ->
    ``cfg/dsmoe-v8.yaml`` (a scale letter after a digit, as ``yolov8s.yaml``), data names -> datasets/."""
    if not isinstance(file, (str, Path)) or os.path.dirname(str(file)) or not str(file).endswith((".yaml", ".yml")):
        return None
    name = str(file)
    for folder in (CFG_DIR, DATA_DIR):
        for candidate in (name, re.sub(SCALE_SUFFIX, r"\1", name)):  # scale suffix -> unified config
            if (folder / candidate).is_file():
                return folder / candidate
    return None


def _check_file(original):
    def check_file(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and not os.path.exists(str(file)):
            found = shipped_file(file)
            if found is not None:
                return str(found)
        return original(file, *args, **kwargs)

    return check_file


def _guess_model_scale(original):
    def guess_model_scale(model_path):
        match = re.fullmatch(r"dsmoe[\w.-]*?(?:-|(?<=\d))([nsmlx])", Path(str(model_path)).stem)  # dots: -g0.1-s
        return match.group(1) if match else original(model_path)

    return guess_model_scale


def _yaml_model_load(original):
    def yaml_model_load(path):
        d = original(path)
        scales, scale = d.get("scales"), d.get("scale")
        if Path(str(path)).stem.startswith("dsmoe") and scales and scale and scale not in scales:
            raise ValueError(f"'{Path(str(path)).name}' asks for scale '{scale}', which this config does not define: "
                             f"use one of {', '.join(f'dsmoe-{s}' for s in scales)}.")
        return d

    return yaml_model_load


def install() -> None:
    patch_function(checks, "check_file", _check_file, ("file",))
    patch_function(tasks, "guess_model_scale", _guess_model_scale, ("model_path",))
    patch_function(tasks, "yaml_model_load", _yaml_model_load, ("path",))  # a scale the config lacks: say which exist
