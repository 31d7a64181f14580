"""Loss selection: ``loss: qfocal`` in the model YAML selects ``ultralytics_dsmoe.loss.QualityFocalDetectionLoss`` inside
``DetectionModel.init_criterion`` (class level, so the EMA copy used for validation gets it too), and models whose
blocks have auxiliary losses get them added (``ultralytics_dsmoe.loss.AuxLosses``).

What the loss module relies on in ``v8DetectionLoss`` is checked here once, at install: its classification term is the
attribute ``bce``, called element-wise on (logits, soft targets), and ``loss`` returns (loss vector, dict of items).
"""

from __future__ import annotations

from ultralytics.nn import tasks
from ultralytics.utils import loss as ultralytics_loss

from ultralytics_dsmoe.util import model_cfg

from ultralytics_dsmoe.guard import PatchError, patch_function, require_source


def check_detection_loss(cls=None) -> None:
    """Raise ``PatchError`` unless ``v8DetectionLoss`` still has the shape ``QualityFocalDetectionLoss`` relies on."""
    cls = cls or getattr(ultralytics_loss, "v8DetectionLoss", None)
    if cls is None:
        raise PatchError("ultralytics.utils.loss.v8DetectionLoss is missing")
    require_source(cls.__init__, ('self.bce = nn.BCEWithLogitsLoss(reduction="none")',))
    owner = getattr(cls, "get_assigned_targets_and_loss", None) or getattr(cls, "loss", None)
    require_source(owner, ("self.bce(pred_scores, target_scores", "dict(zip(self.loss_names"))
    require_source(cls.loss, ("return loss * batch_size, loss_detach",))


def _init_criterion(original):
    def init_criterion(self):
        from ultralytics_dsmoe.loss import LOSSES, AuxLosses  # lazy: the loss module imports ultralytics.utils.loss

        name = str(model_cfg(self).get("loss", "default")).lower()
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


def install() -> None:
    check_detection_loss()
    patch_function(tasks.DetectionModel, "init_criterion", _init_criterion, ("self",))
