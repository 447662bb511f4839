"""A small SSD-style detector: a four-stage backbone, a neck conv per scale, and class and
box heads on three feature maps (strides 4, 8 and 16) with two square priors per cell.

``forward`` returns the raw head outputs, ``(class logits N x P x (classes + 1), box
offsets N x P x 4)`` over the ``P`` priors of :meth:`SSDDetector.priors` (class 0 is the
background), which is what gets exported to ONNX; decoding and NMS
(:func:`halp_trt.detection.decode`) run after. The head convolutions' outputs are model
outputs, so the channel graph freezes them; the backbone and the necks are pruned.
"""

from __future__ import annotations

import torch
import torch.nn as nn

#: Output channels of the backbone's four stages (two 3x3 convs each, the first with
#: stride 2) and of each neck conv.
WIDTHS = (32, 64, 128, 128)
NECK = 64
#: Feature maps used for detection: the outputs of stages 2, 3 and 4.
SCALES = (1, 2, 3)
#: Prior sides in pixels per scale (for a 64-pixel input; they scale with the image).
PRIOR_SIDES = ((8.0, 12.0), (16.0, 22.0), (30.0, 40.0))
#: SSD's box-coding variances (centre, size).
VARIANCES = (0.1, 0.2)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SSDDetector(nn.Module):
    """SSD-style detector for ``image_size`` x ``image_size`` RGB inputs.

    Args:
        num_classes: object classes (the background is added).
        image_size: the input's side in pixels (a multiple of 16).
        widths: the backbone stages' output channels.
        neck: each neck conv's output channels.
    """

    def __init__(
        self,
        num_classes: int = 4,
        image_size: int = 64,
        widths: tuple[int, ...] = WIDTHS,
        neck: int = NECK,
    ) -> None:
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, not {image_size}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.anchors = len(PRIOR_SIDES[0])
        stages, c = [], 3
        for w in widths:
            stages.append(nn.Sequential(conv_bn(c, w, 2), conv_bn(w, w)))
            c = w
        self.backbone = nn.ModuleList(stages)
        self.neck = nn.ModuleList(conv_bn(widths[s], neck) for s in SCALES)
        k = num_classes + 1
        self.cls_heads = nn.ModuleList(
            nn.Conv2d(neck, self.anchors * k, 3, padding=1) for _ in SCALES
        )
        self.box_heads = nn.ModuleList(
            nn.Conv2d(neck, self.anchors * 4, 3, padding=1) for _ in SCALES
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for stage in self.backbone:
            x = stage(x)
            feats.append(x)
        n, k = x.shape[0], self.num_classes + 1
        logits, offsets = [], []
        for neck, cls, box, s in zip(self.neck, self.cls_heads, self.box_heads, SCALES):
            f = neck(feats[s])
            logits.append(cls(f).permute(0, 2, 3, 1).reshape(n, -1, k))
            offsets.append(box(f).permute(0, 2, 3, 1).reshape(n, -1, 4))
        return torch.cat(logits, 1), torch.cat(offsets, 1)

    def priors(self) -> torch.Tensor:
        """``(P, 4)`` priors as ``cx, cy, w, h`` in pixels, in the order of the outputs."""
        out = []
        scale = self.image_size / 64.0
        for s, sides in zip(SCALES, PRIOR_SIDES):
            stride = 2 ** (s + 1)
            cells = self.image_size // stride
            c = (torch.arange(cells, dtype=torch.float32) + 0.5) * stride
            cy, cx = torch.meshgrid(c, c, indexing="ij")
            per_cell = [
                torch.stack(
                    [cx, cy, torch.full_like(cx, side * scale), torch.full_like(cx, side * scale)],
                    -1,
                )
                for side in sides
            ]
            # (cells, cells, anchors, 4): the head's channel order is anchor-major per cell.
            out.append(torch.stack(per_cell, 2).reshape(-1, 4))
        return torch.cat(out)


def to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """``cx, cy, w, h`` -> ``x1, y1, x2, y2``."""
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    """``x1, y1, x2, y2`` -> ``cx, cy, w, h``."""
    return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)


def encode(boxes: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """SSD box coding of ``x1, y1, x2, y2`` boxes against matched ``cx, cy, w, h`` priors."""
    b = to_cxcywh(boxes)
    centre = (b[..., :2] - priors[..., :2]) / (VARIANCES[0] * priors[..., 2:])
    size = torch.log(b[..., 2:] / priors[..., 2:]) / VARIANCES[1]
    return torch.cat([centre, size], -1)


def decode_boxes(offsets: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`encode`: ``x1, y1, x2, y2`` boxes."""
    centre = priors[..., :2] + offsets[..., :2] * VARIANCES[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(offsets[..., 2:] * VARIANCES[1])
    return to_xyxy(torch.cat([centre, size], -1))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``x1, y1, x2, y2`` boxes: ``(len(a), len(b))``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)
