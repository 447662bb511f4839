"""SSD's training loss: priors matched to ground-truth boxes, smooth-L1 on the matched
priors' box offsets, cross-entropy on their classes and on the hardest negatives."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .model import box_iou, encode, to_xyxy

#: A prior whose best IoU with a box reaches this is matched to it.
MATCH_IOU = 0.5
#: Negatives kept per positive (hard negative mining).
NEG_POS_RATIO = 3


def match(
    priors: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, threshold: float = MATCH_IOU
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match priors to one image's boxes (SSD).

    Each box takes its best prior; every other prior takes the box it overlaps most if
    that IoU reaches ``threshold``, else the background.

    Args:
        priors: ``(P, 4)`` ``cx, cy, w, h``.
        boxes: ``(k, 4)`` ``x1, y1, x2, y2``; labels: ``(k,)`` 0-based classes.

    Returns:
        ``(targets (P,) with 0 = background and c + 1 = class c, box offsets (P, 4))``.
    """
    p = priors.shape[0]
    if boxes.numel() == 0:
        return torch.zeros(p, dtype=torch.int64), torch.zeros(p, 4)
    iou = box_iou(boxes, to_xyxy(priors))  # (k, P)
    best_box_iou, best_box = iou.max(0)
    best_prior = iou.argmax(1)
    best_box_iou[best_prior] = 2.0  # every box keeps its best prior
    best_box[best_prior] = torch.arange(boxes.shape[0])
    targets = labels[best_box] + 1
    targets[best_box_iou < threshold] = 0
    return targets, encode(boxes[best_box], priors)


def multibox_loss(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    priors: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
) -> torch.Tensor:
    """SSD's loss of a batch: (smooth-L1 + cross-entropy with 3:1 hard negatives) / positives.

    Args:
        logits: ``(N, P, classes + 1)``; offsets: ``(N, P, 4)`` (the model's outputs).
        priors: ``(P, 4)`` ``cx, cy, w, h``.
        boxes, labels: per image, ``(k, 4)`` ``x1, y1, x2, y2`` and ``(k,)`` classes.
    """
    matched = [match(priors, b, lab) for b, lab in zip(boxes, labels)]
    targets = torch.stack([t for t, _ in matched])
    wanted = torch.stack([o for _, o in matched])
    pos = targets > 0
    n_pos = pos.sum().clamp(min=1)
    box_loss = F.smooth_l1_loss(offsets[pos], wanted[pos], reduction="sum")
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    # Hard negatives: per image, the background priors with the largest loss.
    neg_ce = ce.detach().masked_fill(pos, -1.0)
    rank = neg_ce.argsort(1, descending=True).argsort(1)
    n_neg = (NEG_POS_RATIO * pos.sum(1, keepdim=True)).clamp(min=NEG_POS_RATIO)
    neg = (rank < n_neg) & ~pos
    cls_loss = ce[pos | neg].sum()
    return (box_loss + cls_loss) / n_pos
