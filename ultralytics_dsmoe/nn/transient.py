"""A module base whose per-forward outputs (auxiliary losses, routing records) never travel with the module."""

from __future__ import annotations

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
