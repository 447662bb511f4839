"""Detections from the head outputs: box decoding, per-class score threshold and NMS.

NMS is written with tensor ops: torchvision's compiled ``nms`` does not load against
every torch build (the CPU machines this project is developed on among them).
"""

from __future__ import annotations

import torch

from .model import box_iou, decode_boxes

SCORE_THRESHOLD = 0.05
NMS_IOU = 0.45
#: Candidates kept before NMS and detections kept after it, per image.
PRE_NMS = 200
MAX_DETECTIONS = 50


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes, highest score first.

    Same result as ``torchvision.ops.nms``: a box is dropped when it overlaps a kept,
    higher-scoring box by more than ``iou_threshold``.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = scores.argsort(descending=True)
    iou = box_iou(boxes[order], boxes[order])
    n = order.numel()
    removed = torch.zeros(n, dtype=torch.bool)
    later = torch.ones(n, n, dtype=torch.bool).triu(1)
    over = (iou > iou_threshold) & later
    for i in range(n):
        if not removed[i]:
            removed |= over[i]
    return order[~removed]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS within each class (boxes of different classes never suppress each other)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    # Shift each class's boxes apart so that boxes of different classes never overlap.
    shift = classes.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + shift, scores, iou_threshold)


def decode(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    priors: torch.Tensor,
    *,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
    image_size: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Per image: ``{"boxes" (d, 4) x1 y1 x2 y2, "scores" (d,), "labels" (d,) 0-based}``.

    Args:
        logits, offsets: the model's outputs ``(N, P, classes + 1)`` and ``(N, P, 4)``.
        priors: ``(P, 4)`` ``cx, cy, w, h``.
        image_size: clip boxes to the image when given.
    """
    probs = logits.detach().float().softmax(-1)[..., 1:]
    boxes_all = decode_boxes(offsets.detach().float(), priors)
    if image_size is not None:
        boxes_all = boxes_all.clamp(0, image_size)
    k = probs.shape[-1]
    out = []
    for p, b in zip(probs, boxes_all):
        scores = p.flatten()
        keep = scores > score_threshold
        idx = keep.nonzero().squeeze(1)
        if idx.numel() > PRE_NMS:
            idx = idx[scores[idx].topk(PRE_NMS).indices]
        prior, cls = idx // k, idx % k
        cand_boxes, cand_scores = b[prior], scores[idx]
        kept = batched_nms(cand_boxes, cand_scores, cls, iou_threshold)[:max_detections]
        out.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": cls[kept]})
    return out
