"""Mean average precision from pycocotools' COCOeval (the COCO reference implementation).

torchmetrics' ``MeanAveragePrecision`` wraps the same evaluator, but importing torchmetrics
imports torchvision wherever torchvision is installed, which fails where torchvision's
compiled ops do not load; pycocotools alone has no such dependency.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import UserError


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().float().reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()


def mean_average_precision(
    predictions: Sequence[dict[str, torch.Tensor]],
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    num_classes: int,
) -> dict[str, float]:
    """COCO mAP of detections against ground truth.

    Args:
        predictions: per image ``{"boxes" (d, 4) x1 y1 x2 y2, "scores" (d,), "labels" (d,)}``.
        boxes, labels: per image the ground truth ``(k, 4)`` and ``(k,)``.
        num_classes: classes are ``0 .. num_classes - 1``.

    Returns:
        ``{"map": mAP@[.5:.95], "map_50": mAP@0.5, "map_75": mAP@0.75}`` (0 when there
        are no detections at all).

    Raises:
        UserError: pycocotools is not installed, or the lists differ in length.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise UserError(
            "detection mAP needs pycocotools: pip install 'halp-trt[detection]'"
        ) from exc
    if not len(predictions) == len(boxes) == len(labels):
        raise UserError(
            f"{len(predictions)} predictions for {len(boxes)} images with boxes and "
            f"{len(labels)} with labels"
        )
    images, annotations, results = [], [], []
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        images.append({"id": i})
        for xywh, c in zip(_xywh(b), lab.tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(c),
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
    for i, p in enumerate(predictions):
        for xywh, s, c in zip(_xywh(p["boxes"]), p["scores"].tolist(), p["labels"].tolist()):
            results.append({"image_id": i, "category_id": int(c), "bbox": xywh, "score": s})
    if not results:
        return {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    gt_dict: dict[str, Any] = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints its progress
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(float(s), 0.0) for s in ev.stats[:3]]  # -1 means "no such objects"
    return {"map": stats[0], "map_50": stats[1], "map_75": stats[2]}
