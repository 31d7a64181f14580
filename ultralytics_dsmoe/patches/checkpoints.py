"""Checkpoints: version record, pickling under a module name that says what to install, and weights-only loading.

- ``DetectionModel.__init__`` records the plugin version in models with DS-MoE blocks; ``torch_safe_load`` says so when
  a checkpoint was made by another version, naming the version to install.
- The plugin's blocks pickle through ``new_block`` under ``CHECKPOINT_MODULE``: a user without the plugin is told what to
  install (Ultralytics raises on the unknown module instead of auto-installing it).
- ``torch_safe_load`` first allows the plugin's and TinyViT's classes for weights-only loading
  (``ULTRALYTICS_SAFE_LOAD=1``; restoring an instance's state needs its class on the allow-list). Checkpoints create
  plugin blocks only through ``new_block`` (an empty instance, its state from the file's tensors), never through a
  constructor, so while a checkpoint loads the plugin's constructors refuse to run: a crafted file cannot make them
  download, read files or allocate at will.
"""

from __future__ import annotations

import contextvars
import functools
import pickle
import sys
import types

from ultralytics.nn import tasks
from ultralytics.utils import LOGGER

from ultralytics_dsmoe.meta import __version__
from ultralytics_dsmoe.nn import BLOCKS, RENAMED
from ultralytics_dsmoe.util import model_cfg

from ultralytics_dsmoe.guard import MARK, is_patched, patch_function

CHECKPOINT_MODULE = "ultralytics.DS-MoE plugin required (pip install ultralytics-dsmoe)"


def plugin_classes() -> dict[str, type]:
    """Class name -> class of every DS-MoE block (the stage table), the names checkpoints pickle them under."""
    return {name: b.cls for name, b in BLOCKS.items()}


def is_plugin_model(model) -> bool:
    return any(type(m) in plugin_classes().values() for m in model.model)


def module_classes(module) -> list[type]:
    """The nn.Module classes defined in ``module``."""
    from torch import nn

    return [v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__]


@functools.lru_cache(maxsize=1)
def safe_globals() -> tuple:
    """What a DS-MoE checkpoint pickles beyond Ultralytics' own allow-list: ``new_block`` and the plugin's blocks,
    MobileSAM's TinyViT modules, and torchvision's ResNet blocks (ablation configs A-B)."""
    import torchvision.models.resnet as resnet
    from ultralytics.models.sam.modules import tiny_encoder

    return (new_block, *plugin_classes().values(), *module_classes(tiny_encoder), resnet.Bottleneck, resnet.BasicBlock)


LOADING = contextvars.ContextVar("dsmoe_loading_checkpoint", default=False)  # inside torch_safe_load


def refuse_while_loading(init):
    """Wrap a plugin block's ``__init__``: while a checkpoint loads, a call can only come from a crafted file."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if LOADING.get():
            raise pickle.UnpicklingError(f"the checkpoint calls {type(self).__name__}{args!r}: DS-MoE checkpoints never "
                                         "construct blocks (the file may be crafted); refusing to load it")
        init(self, *args, **kwargs)

    setattr(__init__, MARK, init)
    return __init__


def new_block(name: str):
    """The constructor a checkpoint calls for each plugin block, pickled as ``<CHECKPOINT_MODULE>.new_block``.

    Without the plugin that module does not exist. Its name starts with ``ultralytics.``, so Ultralytics'
    ``torch_safe_load`` raises ``ModuleNotFoundError`` naming it (the install command) rather than trying to
    pip-install whatever module a checkpoint names. Names from older versions map through ``nn.RENAMED``."""
    return object.__new__(plugin_classes()[RENAMED.get(name, name)])


def _reduce_ex(self, protocol):
    """Pickle (and deepcopy) a plugin block as ``new_block(name)`` plus its usual state."""
    reduced = object.__reduce_ex__(self, max(protocol, 2))  # (copyreg.__newobj__, (cls,), state, items, dict items)
    if plugin_classes().get(type(self).__name__) is not type(self):  # a user's subclass: pickled as usual
        return reduced
    return (new_block, (type(self).__name__,), *reduced[2:])


def name_plugin_in_checkpoints() -> None:
    alias = sys.modules.setdefault(CHECKPOINT_MODULE, types.ModuleType(CHECKPOINT_MODULE))
    alias.new_block, new_block.__module__ = new_block, CHECKPOINT_MODULE
    for cls in plugin_classes().values():
        cls.__reduce_ex__ = _reduce_ex
        init = vars(cls).get("__init__")
        if init is not None and not is_patched(init):
            cls.__init__ = refuse_while_loading(init)


def _model_init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if is_plugin_model(self):
            self.yaml["dsmoe_version"] = __version__  # travels in checkpoints: see warn_other_version

    return __init__


def _torch_safe_load(original):
    def torch_safe_load(weight, *args, **kwargs):
        import torch

        torch.serialization.add_safe_globals(list(safe_globals()))  # ULTRALYTICS_SAFE_LOAD=1 (weights_only)
        token = LOADING.set(True)
        try:
            ckpt, file = original(weight, *args, **kwargs)
        finally:
            LOADING.reset(token)
        warn_other_version(ckpt, file)
        return ckpt, file

    return torch_safe_load


def warn_other_version(ckpt: dict, file) -> None:
    """Say so when a checkpoint's DS-MoE blocks were built by another plugin version (their code may differ)."""
    made = model_cfg(ckpt.get("ema") or ckpt.get("model")).get("dsmoe_version")
    if made is not None and made != __version__:
        LOGGER.warning(f"{file} was made with ultralytics-dsmoe {made}; this is {__version__}. If loading, predicting "
                       f"or training it fails, use the version that made it: pip install ultralytics-dsmoe=={made}")


def install() -> None:
    patch_function(tasks.DetectionModel, "__init__", _model_init, ("self", "cfg"))
    patch_function(tasks, "torch_safe_load", _torch_safe_load, ("weight",))
    name_plugin_in_checkpoints()
