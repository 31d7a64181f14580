"""The one seam between ultralytics-dsmoe and Ultralytics internals: every patch lives in this package.

One module per concern, each with an ``install()``:

| module | what it changes in Ultralytics |
|---|---|
| ``parser`` | block names resolve in ``ultralytics.nn.tasks``; ``parse_model`` gains the plugin's channel rules |
| ``lookup`` | bare ``dsmoe*.yaml`` / shipped data names resolve from any directory; ``dsmoe-n.yaml`` selects scale n |
| ``criterion`` | ``loss: qfocal`` selects the QFocal criterion; blocks' auxiliary losses are added |
| ``offline`` | the font and AMP checks never touch the network when offline |
| ``checkpoints`` | version record, pickling that names the plugin, weights-only (safe) loading |
| ``trainer`` | class texts filled from the dataset; gamma pre-processing in the dataset and the predictor |
| ``fuse`` | ``fuse()`` folds the BatchNorms inside TinyViT before Ultralytics' own folding |
| ``transfer`` | ``load()`` maps a plain YOLO checkpoint into an upgrade config (``dsmoe-v8.yaml``) by structure |

Everything goes through ``ultralytics_dsmoe.guard``: each patch is idempotent (the plugin's own marker), refuses to overwrite a name it
does not own, and raises ``PatchError`` naming the installed Ultralytics version when the code it relies on no longer
has the expected shape. The blocks' one contact with internals, the TinyViT walk in ``nn/encoder.py``, is checked the
same way (``check_tinyvit``).
"""

from . import checkpoints, criterion, fuse, lookup, offline, parser, trainer, transfer
from ultralytics_dsmoe.guard import PatchError

CONCERNS = (parser, lookup, criterion, offline, checkpoints, trainer, fuse, transfer)


def install() -> None:
    """Install every patch; safe to call more than once."""
    for concern in CONCERNS:
        concern.install()


__all__ = ("CONCERNS", "PatchError", "install")
