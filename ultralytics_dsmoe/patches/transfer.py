"""Weight transfer into upgrade configs: ``BaseModel.load`` maps a plain YOLO checkpoint into a model built from
``dsmoe-v8.yaml`` / ``dsmoe-11.yaml`` by structure (``ultralytics_dsmoe.upgrade.layer_map``), because the inserted
DS-MoE rows shift every later ``model.<i>`` name. So ``yolo train model=dsmoe-v8s.yaml pretrained=yolov8s.pt`` starts
from yolov8s exactly, as ``dsmoe upgrade`` does; a checkpoint that does not match fails naming the first row that
differs. Every other load (plain YOLO, DS-MoE checkpoints, upgraded checkpoints) is Ultralytics' own, unchanged."""

from __future__ import annotations

from ultralytics.nn import tasks
from ultralytics.utils import LOGGER

from ultralytics_dsmoe.guard import patch_function
from ultralytics_dsmoe.upgrade import describe, is_upgrade, structural_view


def _load(original):
    def load(self, weights, verbose=True):
        source = (weights.get("ema") or weights["model"]) if isinstance(weights, dict) else weights
        if is_upgrade(self) and hasattr(source, "model") and not is_upgrade(source):
            if verbose:
                LOGGER.info(f"DS-MoE upgrade: mapping {describe(source)}'s layers into {describe(self)} by structure; "
                            "its DS-MoE rows keep their initialisation, gates at zero.")
            weights = structural_view(source, self)  # raises UpgradeMismatch naming the first row that differs
        return original(self, weights, verbose)

    return load


def install() -> None:
    patch_function(tasks.BaseModel, "load", _load, ("self", "weights"))
