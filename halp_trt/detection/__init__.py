"""Detection through the Python API: a generated shapes data set, a small SSD-style
detector with its loss, decoding and NMS, COCO mAP (pycocotools), and HALP pruning while
fine-tuning with the heads' outputs kept intact.

    from halp_trt.detection import (SSDDetector, DetectionTraining, make_detection_data,
                                    train_detector, evaluate_detector, prune_detector)

mAP needs pycocotools (``pip install 'halp-trt[detection]'``).
"""

from .data import CLASSES, DetectionData, make_detection_data
from .loss import match, multibox_loss
from .metrics import mean_average_precision
from .model import SSDDetector, box_iou, decode_boxes, encode
from .postprocess import batched_nms, decode, nms
from .train import (
    DetectionPruneResult,
    DetectionTraining,
    evaluate_detector,
    predict,
    prune_detector,
    train_detector,
)

__all__ = [
    "CLASSES",
    "DetectionData",
    "DetectionPruneResult",
    "DetectionTraining",
    "SSDDetector",
    "batched_nms",
    "box_iou",
    "decode",
    "decode_boxes",
    "encode",
    "evaluate_detector",
    "make_detection_data",
    "match",
    "mean_average_precision",
    "multibox_loss",
    "nms",
    "predict",
    "prune_detector",
    "train_detector",
]
