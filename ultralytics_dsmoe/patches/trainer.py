"""Trainer, dataset and predictor hooks: class texts from the dataset, and the paper's gamma pre-processing.

- ``DetectionTrainer.set_model_attributes`` also fills the model's class-text buffers from the dataset
  (``ultralytics_dsmoe.text.fill_text``), before the EMA copy, DDP wrapping and the optimizer are made, and, for
  models with loss-free-balanced experts, adds a batch-end callback that moves their selection biases after each
  training batch (``ultralytics_dsmoe.nn.moe.update_selection_biases``; on every DDP rank alike).
- A data-yaml key ``gamma:`` (the paper's eq. 35) is applied to each image as ``BaseDataset.load_image`` reads it,
  and recorded in the model yaml at training. A PyTorch checkpoint that recorded it gets it on every input path:
  ``BasePredictor.pre_transform`` (files, arrays) and ``BasePredictor.preprocess`` (torch tensors, which skip
  pre_transform: s = r^gamma on their 0-1 values), and standalone validation (``BaseValidator.__call__``) on a data
  yaml without ``gamma:`` applies the recorded value with a warning (``ultralytics_dsmoe.data.gamma``).

These modules import ``ultralytics.models``, which cannot be imported while ``ultralytics.nn`` is still loading (when
the plugin is loaded), so each is patched once it has been imported.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.utils import LOGGER

import ultralytics_dsmoe_hook
from ultralytics_dsmoe.data.gamma import apply_gamma, checked_gamma
from ultralytics_dsmoe.nn.moe import biased_routers, update_selection_biases
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
        if biased_routers(model):
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


def recorded_gamma(model) -> float | None:
    """The gamma a PyTorch model was trained with (a DetectionModel, or AutoBackend around one); exported formats and
    models without a record give None."""
    return (model_cfg(model) or model_cfg(getattr(model, "model", None))).get("gamma")


def _pre_transform(original):
    def pre_transform(self, im):
        gamma = recorded_gamma(self.model)
        if gamma is not None:
            im = [apply_gamma(x.copy(), gamma) for x in im]
        return original(self, im)

    return pre_transform


def _preprocess(original):
    def preprocess(self, im):
        out = original(self, im)
        gamma = recorded_gamma(self.model)
        if gamma is not None and isinstance(im, torch.Tensor):  # tensors skip pre_transform: same s = r^gamma here
            out = out.clamp(0, 1).pow(gamma)
        return out

    return preprocess


def _validate(original):
    def __call__(self, trainer=None, model=None, *args, **kwargs):
        if trainer is None:  # standalone `yolo val`: the data yaml may lack the checkpoint's gamma
            self._dsmoe_gamma = recorded_gamma(model)
            if reconcile_gamma not in self.callbacks["on_val_start"]:
                self.add_callback("on_val_start", reconcile_gamma)
        return original(self, trainer, model, *args, **kwargs)

    return __call__


def reconcile_gamma(validator) -> None:
    """Before the first image is read: a checkpoint trained with gamma is validated with it, whatever the data yaml."""
    recorded, data = getattr(validator, "_dsmoe_gamma", None), validator.data
    given = checked_gamma(data.get("gamma"))
    if recorded is not None and given is None:
        LOGGER.warning(f"DS-MoE: the model was trained with gamma {recorded} (paper eq. 35) but the data yaml has no "
                       "'gamma:'; validating with the recorded gamma, as training did.")
        data["gamma"] = recorded
    elif recorded is not None and given != recorded:
        LOGGER.warning(f"DS-MoE: the data yaml's gamma {given} differs from the model's training gamma {recorded}; "
                       "validating with the data yaml's.")


def install() -> None:
    when = ultralytics_dsmoe_hook.when_imported
    when("ultralytics.models.yolo.detect.train",
         lambda m: patch_function(m.DetectionTrainer, "set_model_attributes", _set_model_attributes, ("self",)))
    when("ultralytics.data.base", lambda m: patch_function(m.BaseDataset, "load_image", _load_image, ("self", "i")))
    when("ultralytics.engine.predictor", lambda m: (
        patch_function(m.BasePredictor, "pre_transform", _pre_transform, ("self", "im")),
        patch_function(m.BasePredictor, "preprocess", _preprocess, ("self", "im"))))
    when("ultralytics.engine.validator",
         lambda m: patch_function(m.BaseValidator, "__call__", _validate, ("self", "trainer", "model")))
