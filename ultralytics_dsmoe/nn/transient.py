"""Module bases for per-forward state: activations that never travel with the module, and auxiliary losses."""

from __future__ import annotations

import torch
from torch import nn


class TransientState(nn.Module):
    """Attributes named in ``TRANSIENT`` hold tensors from the last forward pass (possibly still in the autograd
    graph). They are dropped, not copied, by ``copy.deepcopy`` (ModelEMA, checkpoint snapshots) and by pickling
    (``torch.save``), so checkpoints carry no stale activations and copying never hits non-leaf tensors."""

    TRANSIENT: tuple[str, ...] = ()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(dict.fromkeys(self.TRANSIENT))
        return state


class AuxLossBlock(TransientState):
    """A block with auxiliary loss terms, in the spirit of st-moe's named aux losses.

    ``AUX_LOSSES`` maps each term's name (its results.csv column) to the model-YAML key of its gain and that gain's
    default. ``forward`` keeps, in transient state, what the terms need (``remember``); ``aux_losses()`` computes them
    from it. The criterion (``ultralytics_dsmoe.loss.AuxLosses``) asks for them when training or validating, so
    prediction never pays for them. No term exists before the first forward, nor while tracing for export.
    """

    AUX_LOSSES: dict[str, tuple[str, float]] = {}
    TRANSIENT = ("saved",)

    def remember(self, *tensors: torch.Tensor) -> None:
        """Keep what ``aux_losses`` needs from this forward (not while tracing: no state in exported graphs)."""
        if not torch.jit.is_tracing():
            self.saved = tensors

    def aux_losses(self, terms=None, batch=None) -> dict[str, torch.Tensor]:
        """Term name -> scalar loss, computed from the last forward: the names in ``terms``, or all of them (None).
        ``batch`` is the training batch the forward saw (its boxes), for terms supervised by them."""
        raise NotImplementedError
