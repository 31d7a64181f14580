"""Box grounding: the loss that tells class c's text anchor that it stands for class c.

Without it, nothing in DS-MoE ties anchor c to the pixels of class c. Every text path (Stages 2, 5-9) treats the nc
classes alike, and the Detect head's class channels are not connected to the anchors. A permutation of the prompts
is therefore a relabelling the network can absorb: the shuffled-prompt control trains the same family of models as
the real prompts (BENCHMARKS.md, "Upgrading a trained YOLO", text controls).

The grounding loss supervises a block's per-pixel class assignment with the training boxes (YOLO-World's region-text
loss, read per cell of the feature map):

    y(i, j) = class of the smallest box that covers cell (i, j); cells in no box are ignored   (B, H, W)
    L_ground = mean over covered cells of  -log softmax_c(logits)(y)                            logits (B, nc, H, W)

A cell is covered when its centre lies inside the box, or when it holds the box's centre, so a pinhole smaller than
one cell still labels one cell. The smallest box wins where boxes overlap: small defects are the rare ones.

With a background class (the router's background anchor, logits (B, nc + 1, H, W)), the cells in no box are its
targets, and the two sets of cells weigh alike, so the many background cells do not drown the defects:

    L_ground = mean over covered cells of CE + mean over uncovered cells of CE(background)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ("cell_targets", "grounding_loss")


def cell_targets(batch: dict, size: tuple[int, int]) -> torch.Tensor:
    """A training batch's boxes (normalised xywh, ``batch_idx``, ``cls``) -> (B, H, W) class per cell, -1 = no box."""
    h, w = size
    boxes = batch["bboxes"].float()  # (N, 4) x, y, w, h in [0, 1]
    cls = batch["cls"].view(-1).long()
    image = batch["batch_idx"].view(-1).long()
    b = batch["img"].shape[0]
    device = boxes.device
    targets = torch.full((b, h, w), -1, dtype=torch.long, device=device)
    if not len(boxes):
        return targets
    ys = (torch.arange(h, device=device) + 0.5) / h  # cell centres
    xs = (torch.arange(w, device=device) + 0.5) / w
    x, y, bw, bh = boxes.unbind(1)
    inside_x = (xs[None] - x[:, None]).abs() <= bw[:, None] / 2  # (N, W)
    inside_y = (ys[None] - y[:, None]).abs() <= bh[:, None] / 2  # (N, H)
    cover = inside_y[:, :, None] & inside_x[:, None, :]  # (N, H, W)
    row = (y * h).long().clamp(0, h - 1)
    col = (x * w).long().clamp(0, w - 1)
    cover[torch.arange(len(boxes), device=device), row, col] = True  # the cell holding the box centre
    # each cell takes the smallest covering box of its own image: rank boxes from largest (0) to smallest (N - 1)
    order = torch.argsort(bw * bh, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=device)
    keyed = torch.where(cover, rank[:, None, None], -1)  # (N, H, W)
    best = torch.full((b, h, w), -1, dtype=torch.long, device=device)
    best = best.scatter_reduce(0, image[:, None, None].expand_as(keyed), keyed, "amax")  # (B, H, W) winning rank
    return torch.where(best >= 0, cls[order][best.clamp_min(0)], targets)


def grounding_loss(logits: torch.Tensor, batch: dict, background: bool = False) -> torch.Tensor:
    """Per-cell class logits (B, nc, H, W) and the batch's boxes -> mean cross-entropy over the covered cells (0 when
    the batch has none; still in the graph, so every rank of a DDP run backpropagates the same parameters).
    ``background``: the logits' last channel is the background class, for the uncovered cells (above)."""
    targets = cell_targets(batch, logits.shape[-2:]).to(logits.device)
    if background:
        covered = (targets >= 0).float()  # (B, H, W)
        uncovered = 1 - covered
        ce = F.cross_entropy(logits.float(), targets.masked_fill(targets < 0, logits.shape[1] - 1), reduction="none")
        return (ce * covered).sum() / covered.sum().clamp_min(1) + (ce * uncovered).sum() / uncovered.sum().clamp_min(1)
    if targets.max() < 0:
        return logits.float().sum() * 0
    return F.cross_entropy(logits.float(), targets, ignore_index=-1)
