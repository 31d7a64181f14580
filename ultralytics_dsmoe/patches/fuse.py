"""Fusing: ``BaseModel.fuse`` first folds the BatchNorms Ultralytics does not know inside DS-MoE blocks (TinyViT's
conv + BN pairs) into their convs (``ultralytics_dsmoe.nn.encoder.fold_batchnorms``), then does its own work, which
folds the plugin's ``Conv`` blocks like any other."""

from __future__ import annotations

from ultralytics.nn import tasks

from .checkpoints import plugin_classes
from ultralytics_dsmoe.guard import patch_function


def _fuse(original):
    def fuse(self, *args, **kwargs):
        from ultralytics_dsmoe.nn.encoder import fold_batchnorms

        blocks = tuple(plugin_classes().values())
        for m in self.modules():
            if isinstance(m, blocks):
                fold_batchnorms(m)
        return original(self, *args, **kwargs)

    return fuse


def install() -> None:
    patch_function(tasks.BaseModel, "fuse", _fuse, ("self",))
