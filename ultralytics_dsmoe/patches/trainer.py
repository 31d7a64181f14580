"""Trainer, dataset and predictor hooks: class texts from the dataset, and the paper's gamma pre-processing.

- ``DetectionTrainer.set_model_attributes`` also fills the model's class-text buffers from the dataset
  (``ultralytics_dsmoe.text.fill_text``), before the EMA copy, DDP wrapping and the optimizer are made, and, for
  models with loss-free-balanced experts, adds a batch-end callback that moves their selection biases after each
  optimiser step (``ultralytics_dsmoe.nn.moe.update_selection_biases``; on every DDP rank alike).
- A data-yaml key ``gamma:`` (the paper's eq. 35) is applied to each image as ``BaseDataset.load_image`` reads it,
  recorded in the model yaml at training, and applied again by ``BasePredictor.pre_transform`` for PyTorch checkpoints
  that recorded it (``ultralytics_dsmoe.data.gamma``).

These modules import ``ultralytics.models``, which cannot be imported while ``ultralytics.nn`` is still loading (when
the plugin is loaded), so each is patched once it has been imported.
"""

from __future__ import annotations

from pathlib import Path

import ultralytics_dsmoe_hook
from ultralytics_dsmoe.data.gamma import apply_gamma, checked_gamma
from ultralytics_dsmoe.nn.moe import ExpertRouter, update_selection_biases
from ultralytics_dsmoe.util import model_cfg

from ultralytics_dsmoe.guard import patch_function


def _set_model_attributes(original):
    def set_model_attributes(self):
        original(self)
        from ultralytics.utils.torch_utils import unwrap_model

        from ultralytics_dsmoe.text import fill_text  # lazy: only training needs text embeddings

        yaml_file = self.data.get("yaml_file")
        root = Path(yaml_file).parent if yaml_file else None  # a `prompts:` file is relative to the data yaml
        model = unwrap_model(self.model)
        fill_text(model, self.data["names"], self.data.get("prompts"), root)
        if any(isinstance(m, ExpertRouter) and m.balance == "bias" for m in model.modules()):
            self.add_callback("on_train_batch_end", lambda trainer: update_selection_biases(unwrap_model(trainer.model)))
        gamma, cfg = checked_gamma(self.data.get("gamma")), model_cfg(model)
        if gamma is not None:  # saved with the checkpoint: predict applies it too
            cfg["gamma"] = gamma
        else:
            cfg.pop("gamma", None)

    return set_model_attributes


def _load_image(original):
    def load_image(self, i, *args, **kwargs):
        fresh = self.ims[i] is None  # images cached in RAM or the mosaic buffer were corrected when first read
        im, hw0, hw = original(self, i, *args, **kwargs)
        gamma = checked_gamma((getattr(self, "data", None) or {}).get("gamma"))
        if fresh and gamma is not None:
            apply_gamma(im, gamma)  # in place, so the cached copy is the corrected one
        return im, hw0, hw

    return load_image


def _pre_transform(original):
    def pre_transform(self, im):
        gamma = model_cfg(getattr(self.model, "model", None)).get("gamma")  # AutoBackend -> PyTorch model's yaml;
        if gamma is not None:  # exported formats carry no record
            im = [apply_gamma(x.copy(), gamma) for x in im]
        return original(self, im)

    return pre_transform


def install() -> None:
    when = ultralytics_dsmoe_hook.when_imported
    when("ultralytics.models.yolo.detect.train",
         lambda m: patch_function(m.DetectionTrainer, "set_model_attributes", _set_model_attributes, ("self",)))
    when("ultralytics.data.base", lambda m: patch_function(m.BaseDataset, "load_image", _load_image, ("self", "i")))
    when("ultralytics.engine.predictor",
         lambda m: patch_function(m.BasePredictor, "pre_transform", _pre_transform, ("self", "im")))
