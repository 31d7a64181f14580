"""The one seam between ultralytics-dsmoe and Ultralytics internals.

Everything the plugin changes in Ultralytics is installed by ``install()`` below, and nowhere else:

1. YAML parser: block names become resolvable in ``ultralytics.nn.tasks`` and ``parse_model`` gains one branch
   that applies the channel rules in ``BLOCKS`` (channel-changing, multi-input and list-returning blocks).
2. Config lookup: bare ``dsmoe*.yaml`` and shipped dataset names resolve from any directory (a local file of the
   same name wins), and ``dsmoe-n.yaml``-style names select their scale.
3. Loss: a model-YAML key ``loss: qfocal`` selects ``ultralytics_dsmoe.loss.QualityFocalDetectionLoss`` inside
   ``DetectionModel.init_criterion`` (so the EMA copy used for validation gets it too), and models with MoE or
   aggregation blocks get their auxiliary losses added (``ultralytics_dsmoe.loss.AuxLosses``).
4. Offline: the font check and the AMP check never touch the network when Ultralytics is offline.
5. Checkpoints: ``torch_safe_load`` first allows the plugin's and TinyViT's classes for weights-only loading
   (``ULTRALYTICS_SAFE_LOAD=1``), and the plugin's blocks pickle through ``new_block`` under a module name that
   tells a user without the plugin what to install (Ultralytics raises on it instead of auto-installing).
   ``DetectionModel.__init__`` records the plugin version in models with DS-MoE blocks; loading a checkpoint
   made by another version says so and names the version to install.
6. Text: ``DetectionTrainer.set_model_attributes`` also fills the model's class-text buffers from the dataset
   (``ultralytics_dsmoe.text.fill_text``), before the EMA copy, DDP wrapping and the optimizer are made.
7. Fusing: ``BaseModel.fuse`` first folds the BatchNorms inside DS-MoE blocks (TinyViT's conv + BN pairs and the
   plugin's own) into their convs (``ultralytics_dsmoe.nn.fold_batchnorms``), then does its own work.
8. Pre-processing: a data-yaml key ``gamma:`` (the paper's eq. 35) is applied to each image as
   ``BaseDataset.load_image`` reads it, recorded in the model yaml at training, and applied again by
   ``BasePredictor.pre_transform`` for PyTorch checkpoints that recorded it (``ultralytics_dsmoe.data.gamma``).

Each patch is idempotent, refuses to overwrite a name it does not own, and raises ``PatchError`` naming the
installed Ultralytics version when the code it patches no longer has the expected shape.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Callable

from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.nn import tasks
from ultralytics.utils import LOGGER, USER_CONFIG_DIR, WEIGHTS_DIR, checks
from ultralytics.utils.ops import make_divisible

from ultralytics_dsmoe import __version__
from ultralytics_dsmoe.data.gamma import apply_gamma, checked_gamma
from ultralytics_dsmoe.nn import (
    CBAM,
    AnisotropicDSConv,
    ClassText,
    ExpertEnsemble,
    FeatureAggregate,
    HybridEncoder,
    HyperbolicAlign,
    MobileSAMEncoder,
    Pick,
    SemanticDistill,
    SpaceBroadcast,
    SparseMoE,
)

SUPPORTED = "8.4.x"
CFG_DIR = Path(__file__).resolve().parent / "cfg"  # wheel layout: cfg/ and datasets/ ship inside the package
DATA_DIR = Path(__file__).resolve().parent / "datasets"
if not CFG_DIR.is_dir():  # source checkout or editable install: top-level cfg/ and datasets/
    CFG_DIR, DATA_DIR = CFG_DIR.parent.parent / "cfg", DATA_DIR.parent.parent / "datasets"


class PatchError(RuntimeError):
    """The installed Ultralytics does not have the shape this plugin patches."""

    def __init__(self, what: str):
        super().__init__(
            f"ultralytics-dsmoe cannot patch ultralytics {ULTRALYTICS_VERSION} (supported: {SUPPORTED}): {what}. "
            f"Install a supported ultralytics, or set ULTRALYTICS_DSMOE_AUTOLOAD=0 to use Ultralytics without DS-MoE."
        )


# ---------------------------------------------------------------------------------------------------------------
# 1. Blocks and their channel rules
# A rule maps (m, c1, args, scale) -> (c2, args): m is the block class; c1 is ch[f], a list when `from` is a list or
# the source block returns one; scale(c) applies the YAML width multiple and max_channels as Ultralytics does for Conv.
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
    """HybridEncoder(c1, weights, ratio, stem, p2): a list of maps like ``listed_output``; the stem width is scaled."""
    weights, ratio, stem, p2 = (list(args) + ["auto", 0.5, 0, False][len(args):])[:4]
    return list(m.out_channels), [c1, weights, ratio, scale(stem) if stem else 0, p2]


def picked_output(m, c1, args, scale):
    """Pick(c1, i) takes element i of a list-returning block."""
    return c1[args[0]], [c1, *args]


def declared_output(m, c1, args, scale):
    """Block(c1, c2, *args) with args[0] an absolute width, not scaled (e.g. the text width)."""
    return args[0], [c1, *args]


def geometry_output(m, c1, args, scale):
    """HyperbolicAlign(c1, n, nc, ...) returns n tangent channels plus nc distance maps."""
    return args[0] + args[1], [c1, *args]


BLOCKS: dict[str, tuple[type, ChannelRule]] = {
    "MobileSAMEncoder": (MobileSAMEncoder, listed_output),  # Stage 3
    "HybridEncoder": (HybridEncoder, hybrid_output),  # Stage 3, reduced-resolution TinyViT + full-resolution stem
    "Pick": (Pick, picked_output),
    "AnisotropicDSConv": (AnisotropicDSConv, same_channels),  # Stage 3, eqs. 4-5
    "CBAM": (CBAM, same_channels),  # Stage 4
    "ClassText": (ClassText, declared_output),  # Stage 1
    "SemanticDistill": (SemanticDistill, same_channels),  # Stage 2
    "HyperbolicAlign": (HyperbolicAlign, geometry_output),  # Stage 5
    "SpaceBroadcast": (SpaceBroadcast, scaled_output),  # Stage 6
    "SparseMoE": (SparseMoE, scaled_output),  # Stages 7-8
    "ExpertEnsemble": (ExpertEnsemble, scaled_output),  # Stage 9
    "FeatureAggregate": (FeatureAggregate, scaled_output),  # Stage 10
}


def channel_rules() -> dict[type, Callable]:
    """The branch added to ``parse_model`` calls ``rules[m](m, ch, f, args, width, max_channels) -> (c2, args)``."""

    def bind(rule):
        def apply(m, ch, f, args, width, max_channels):
            c1 = [ch[x] for x in f] if isinstance(f, list) else ch[f]
            return rule(m, c1, args, lambda c: make_divisible(min(c, max_channels) * width, 8))

        return apply

    return {cls: bind(rule) for cls, rule in BLOCKS.values()}


# The anchored edits to parse_model: a plugin branch before the first stock channel rule; path-like string args
# (e.g. '/abs/mobile_sam.pt') passed through verbatim instead of crashing ast.literal_eval with SyntaxError; and block
# names resolved by ``resolve_block``, which explains an unknown name instead of a bare KeyError.
PARSE_MODEL_EDITS = (
    (
        "        if m in base_modules:\n",
        "        if m in _dsmoe_channel_rules:  # ultralytics-dsmoe plugin blocks\n"
        "            c2, args = _dsmoe_channel_rules[m](m, ch, f, args, width, max_channels)\n"
        "        elif m in base_modules:\n",
    ),
    ("with contextlib.suppress(ValueError):", "with contextlib.suppress(ValueError, SyntaxError):"),
    ("            else globals()[m]\n", "            else _dsmoe_resolve(m, globals(), i)\n"),  # unknown names: a clear error
)


def patched_parse_model(parse_model: Callable) -> Callable:
    """Return ``parse_model`` recompiled with ``PARSE_MODEL_EDITS`` in its own module globals."""
    src = textwrap.dedent(inspect.getsource(parse_model))
    for anchor, replacement in PARSE_MODEL_EDITS:
        if src.count(anchor) != 1:
            raise PatchError(f"parse_model no longer contains exactly one {anchor.strip()!r}")
        src = src.replace(anchor, replacement)
    lineno = parse_model.__code__.co_firstlineno
    code = compile("\n" * (lineno - 1) + src, parse_model.__code__.co_filename, "exec")
    namespace = {}
    exec(code, parse_model.__globals__, namespace)  # noqa: S102 - Ultralytics' own source, two anchored edits
    new = namespace[parse_model.__name__]
    new.__wrapped__ = parse_model
    return new


class UnknownBlockError(KeyError):
    """A model yaml names a block that neither Ultralytics nor this plugin defines (a KeyError, as before)."""

    def __str__(self):
        return str(self.args[0])


def resolve_block(name: str, namespace: dict, row: int):
    """``namespace[name]``, or an ``UnknownBlockError`` naming the row, close matches and the plugin's blocks."""
    if name in namespace:
        return namespace[name]
    import difflib

    from torch import nn

    layers = [k for k, v in namespace.items() if isinstance(v, type) and issubclass(v, nn.Module)]
    close = difflib.get_close_matches(name, layers, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UnknownBlockError(
        f"Unknown block '{name}' in row {row} of the model yaml.{hint} DS-MoE blocks: {', '.join(BLOCKS)}. "
        "Other names must be Ultralytics blocks (as in ultralytics/nn/tasks.py), 'nn.<torch.nn layer>' or "
        "'torchvision.ops.<op>'. If a DS-MoE block is missing, the plugin is not loaded: check that "
        "ultralytics-dsmoe is installed in this environment and ULTRALYTICS_DSMOE_AUTOLOAD is not 0."
    )


def register_names(module=tasks) -> None:
    """Make every block resolvable by name in the parser's globals, never shadowing another object."""
    for name, (cls, _) in BLOCKS.items():
        existing = getattr(module, name, None)
        if existing is not None and existing is not cls and getattr(existing, "__module__", "") != cls.__module__:
            raise PatchError(f"'{name}' already exists in {module.__name__} as {existing!r}; refusing to overwrite it")
        setattr(module, name, cls)
    module._dsmoe_channel_rules = channel_rules()
    module._dsmoe_resolve = resolve_block


# ---------------------------------------------------------------------------------------------------------------
# 2-4. Function patches: wrap a function and rebind every already-imported `ultralytics.*` alias of it


def patch_function(module, name: str, make_wrapper: Callable, params: tuple[str, ...]) -> None:
    """Replace ``module.name`` by ``make_wrapper(original)`` everywhere Ultralytics imported it (idempotent).

    ``module`` may also be a class (its method is replaced on the class itself).

    ``params`` are parameter names the original must accept; a mismatch raises ``PatchError``.
    """
    original = getattr(module, name, None)
    if original is None or not callable(original):
        raise PatchError(f"{module.__name__}.{name} is missing")
    if hasattr(original, "_dsmoe_original"):
        return  # already installed
    missing = [p for p in params if p not in inspect.signature(original).parameters]
    if missing:
        raise PatchError(f"{module.__name__}.{name} no longer takes {missing}")
    wrapper = make_wrapper(original)
    wrapper._dsmoe_original = original
    setattr(module, name, wrapper)
    for mod in list(sys.modules.values()):  # aliases made by `from ... import name` before the patch
        if getattr(mod, "__name__", "").startswith("ultralytics.") and vars(mod).get(name) is original:
            setattr(mod, name, wrapper)


def shipped_file(file: str) -> Path | None:
    """A bare YAML name shipped with the plugin: ``dsmoe-s.yaml`` -> ``cfg/dsmoe.yaml``, data names -> datasets/."""
    if not isinstance(file, (str, Path)) or os.path.dirname(str(file)) or not str(file).endswith((".yaml", ".yml")):
        return None
    name = str(file)
    for folder in (CFG_DIR, DATA_DIR):
        for candidate in (name, re.sub(r"-[nsmlx](\.ya?ml)$", r"\1", name)):  # scale suffix -> unified config
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
        match = re.fullmatch(r"dsmoe[\w-]*?-([nsmlx])", Path(str(model_path)).stem)
        return match.group(1) if match else original(model_path)

    return guess_model_scale


def _model_init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if any(type(m) in _plugin_blocks().values() for m in self.model):
            self.yaml["dsmoe_version"] = __version__  # travels in checkpoints: see warn_other_version

    return __init__


def _init_criterion(original):
    def init_criterion(self):
        from ultralytics_dsmoe.loss import LOSSES, AuxLosses  # lazy: the loss module imports ultralytics.utils.loss

        name = str((self.yaml or {}).get("loss", "default")).lower() if isinstance(self.yaml, dict) else "default"
        if name in {"default", "bce"}:
            criterion = original(self)
        elif name not in LOSSES:
            raise ValueError(f"Unknown 'loss: {name}' in the model YAML. Choose one of {['default', *LOSSES]}.")
        elif getattr(self.model[-1], "one2one_cv2", None) is not None:
            raise ValueError(f"'loss: {name}' supports the one-to-many Detect head, not end-to-end heads.")
        else:
            criterion = LOSSES[name](self)
        aux = AuxLosses(criterion, self)
        return aux if aux.terms else criterion  # stock models keep the stock criterion object

    return init_criterion


def _set_model_attributes(original):
    def set_model_attributes(self):
        original(self)
        from ultralytics.utils.torch_utils import unwrap_model

        from ultralytics_dsmoe.text import fill_text  # lazy: only training needs text embeddings

        yaml_file = self.data.get("yaml_file")
        root = Path(yaml_file).parent if yaml_file else None  # a `prompts:` file is relative to the data yaml
        model = unwrap_model(self.model)
        fill_text(model, self.data["names"], self.data.get("prompts"), root)
        gamma = checked_gamma(self.data.get("gamma"))
        if isinstance(model.yaml, dict) and gamma is not None:  # saved with the checkpoint: predict applies it too
            model.yaml["gamma"] = gamma
        elif isinstance(model.yaml, dict):
            model.yaml.pop("gamma", None)

    return set_model_attributes


def _fuse(original):
    def fuse(self, *args, **kwargs):
        from ultralytics_dsmoe.nn.encoder import fold_batchnorms

        for m in self.modules():
            if type(m) in _plugin_blocks().values():
                fold_batchnorms(m)
        return original(self, *args, **kwargs)

    return fuse


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
        yaml = getattr(getattr(self.model, "model", None), "yaml", None)  # AutoBackend -> PyTorch model's yaml
        gamma = yaml.get("gamma") if isinstance(yaml, dict) else None  # exported formats carry no record
        if gamma is not None:
            im = [apply_gamma(x.copy(), gamma) for x in im]
        return original(self, im)

    return pre_transform


def _patch_detection_trainer(module) -> None:
    patch_function(module.DetectionTrainer, "set_model_attributes", _set_model_attributes, ("self",))


def module_classes(module, names=None) -> list[type]:
    """The nn.Module classes defined in ``module`` (or its submodules), optionally only those in ``names``."""
    from torch import nn

    return [v for k, v in vars(module).items() if (names is None or k in names) and isinstance(v, type)
            and issubclass(v, nn.Module) and v.__module__.startswith(module.__name__)]


@functools.lru_cache(maxsize=1)
def safe_globals() -> tuple[type, ...]:
    """Classes a DS-MoE checkpoint pickles beyond Ultralytics' own allow-list: the plugin's blocks, MobileSAM's
    TinyViT modules, and torchvision's ResNet blocks (ablation configs A-B)."""
    import torchvision.models.resnet as resnet
    from ultralytics.models.sam.modules import tiny_encoder

    return (*_plugin_blocks().values(), *module_classes(tiny_encoder), resnet.Bottleneck, resnet.BasicBlock)


CHECKPOINT_MODULE = "ultralytics.DS-MoE plugin required (pip install ultralytics-dsmoe)"


def new_block(name: str):
    """The constructor a checkpoint calls for each plugin block, pickled as ``<CHECKPOINT_MODULE>.new_block``.

    Without the plugin that module does not exist. Its name starts with ``ultralytics.``, so Ultralytics'
    ``torch_safe_load`` raises ``ModuleNotFoundError`` naming it (the install command) rather than trying to
    pip-install whatever module a checkpoint names."""
    return object.__new__(_plugin_blocks()[name])


@functools.lru_cache(maxsize=1)
def _plugin_blocks() -> dict[str, type]:
    import ultralytics_dsmoe.nn as blocks

    return {cls.__qualname__: cls for cls in module_classes(blocks, blocks.__all__)}


def _reduce_ex(self, protocol):
    """Pickle (and deepcopy) a plugin block as ``new_block(name)`` plus its usual state."""
    reduced = object.__reduce_ex__(self, max(protocol, 2))  # (copyreg.__newobj__, (cls,), state, items, dict items)
    if _plugin_blocks().get(type(self).__qualname__) is not type(self):  # a user's subclass: pickled as usual
        return reduced
    return (new_block, (type(self).__qualname__,), *reduced[2:])


def name_plugin_in_checkpoints() -> None:
    alias = sys.modules.setdefault(CHECKPOINT_MODULE, types.ModuleType(CHECKPOINT_MODULE))
    alias.new_block, new_block.__module__ = new_block, CHECKPOINT_MODULE
    for cls in _plugin_blocks().values():
        cls.__reduce_ex__ = _reduce_ex


def _torch_safe_load(original):
    def torch_safe_load(weight, *args, **kwargs):
        import torch

        torch.serialization.add_safe_globals([*safe_globals(), new_block])  # ULTRALYTICS_SAFE_LOAD=1 (weights_only)
        ckpt, file = original(weight, *args, **kwargs)
        warn_other_version(ckpt, file)
        return ckpt, file

    return torch_safe_load


def warn_other_version(ckpt: dict, file) -> None:
    """Say so when a checkpoint's DS-MoE blocks were built by another plugin version (their code may differ)."""
    yaml = getattr(ckpt.get("ema") or ckpt.get("model"), "yaml", None)
    made = yaml.get("dsmoe_version") if isinstance(yaml, dict) else None
    if made is not None and made != __version__:
        LOGGER.warning(f"{file} was made with ultralytics-dsmoe {made}; this is {__version__}. If loading, predicting "
                       f"or training it fails, use the version that made it: pip install ultralytics-dsmoe=={made}")


def is_offline() -> bool:
    from ultralytics import utils

    return not utils.ONLINE


def _check_font(original):
    def check_font(font="Arial.ttf"):
        if is_offline() and not (USER_CONFIG_DIR / Path(font).name).exists():
            from matplotlib import font_manager

            return Path(font_manager.findfont("DejaVu Sans"))  # bundled with matplotlib: no download needed
        return original(font)

    return check_font


def _check_amp(original):
    def check_amp(model, *args, **kwargs):
        device = next(model.parameters()).device
        if device.type != "cuda" or not is_offline() or (WEIGHTS_DIR / "yolo26n.pt").is_file():
            return original(model, *args, **kwargs)  # CPU/MPS: False; online or weights present: stock check
        # Offline without the reference weights: instead of a download attempt, check that the model being trained
        # stays finite under fp16 autocast (the failure AMP checks exist to catch).
        import copy

        import torch

        probe = copy.deepcopy(model).eval()
        with torch.no_grad(), torch.autocast("cuda"):
            out = probe(torch.rand(2, 3, 256, 256, device=device))
        finite = all(torch.isfinite(t).all() for t in _tensors(out))
        LOGGER.info(f"AMP: offline check on the model itself {'passed' if finite else 'failed: amp disabled'}.")
        return bool(finite)

    return check_amp


def _tensors(x):
    """Every tensor in a nested model output."""
    if hasattr(x, "dtype"):
        return [x]
    items = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else []
    return [t for item in items for t in _tensors(item)]


def install() -> None:
    """Install every patch; safe to call more than once."""
    register_names()
    if not hasattr(tasks.parse_model, "__wrapped__"):
        tasks.parse_model = patched_parse_model(tasks.parse_model)
    patch_function(checks, "check_file", _check_file, ("file",))
    patch_function(tasks, "guess_model_scale", _guess_model_scale, ("model_path",))
    patch_function(checks, "check_font", _check_font, ("font",))
    patch_function(checks, "check_amp", _check_amp, ("model",))
    patch_function(tasks.DetectionModel, "__init__", _model_init, ("self", "cfg"))
    patch_function(tasks.DetectionModel, "init_criterion", _init_criterion, ("self",))  # class level: EMA copy too
    patch_function(tasks, "torch_safe_load", _torch_safe_load, ("weight",))
    patch_function(tasks.BaseModel, "fuse", _fuse, ("self",))
    name_plugin_in_checkpoints()
    # Text embeddings: filled once the dataset's names are known, before EMA, DDP and the optimizer exist. The trainer
    # module imports ultralytics.models, which cannot be imported while ultralytics.nn is still loading: patch it
    # when it has been imported.
    import ultralytics_dsmoe_hook

    ultralytics_dsmoe_hook.when_imported("ultralytics.models.yolo.detect.train", _patch_detection_trainer)
    ultralytics_dsmoe_hook.when_imported(
        "ultralytics.data.base", lambda m: patch_function(m.BaseDataset, "load_image", _load_image, ("self", "i"))
    )
    ultralytics_dsmoe_hook.when_imported(
        "ultralytics.engine.predictor",
        lambda m: patch_function(m.BasePredictor, "pre_transform", _pre_transform, ("self", "im")),
    )
