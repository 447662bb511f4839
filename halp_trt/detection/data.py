"""A detection data set the repository generates: coloured shapes on textured backgrounds.

Each image holds 1 to ``max_objects`` objects of four classes (filled circle, filled
square, filled triangle, cross) in eight colours, 8 to 26 pixels wide (aspect ratios
0.75 to 1.33), placed anywhere inside the image with little overlap, on one of three
textures (pixel noise, a colour gradient, stripes at a random angle) plus sensor noise.
Everything follows one seed, so a split is the same on every machine and every run,
and nothing is downloaded.

The shapes share colours and the textures share the shapes' colours, so colour alone
never tells a class: the detector must learn form, size and position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError

#: Class names; label ``k`` (0-based) is ``CLASSES[k]``.
CLASSES = ("circle", "square", "triangle", "cross")
PALETTE = np.array(
    [
        (0.90, 0.15, 0.15),
        (0.15, 0.75, 0.20),
        (0.20, 0.35, 0.95),
        (0.95, 0.85, 0.15),
        (0.85, 0.25, 0.85),
        (0.15, 0.85, 0.85),
        (0.95, 0.95, 0.95),
        (0.10, 0.10, 0.10),
    ],
    dtype=np.float32,
)
TEXTURES = ("noise", "gradient", "stripes")
MIN_SIZE, MAX_SIZE = 8, 26
#: Two objects may overlap by at most this intersection over union.
MAX_OVERLAP = 0.2


@dataclass
class DetectionData:
    """Images with boxes and labels.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in [0, 1].
        boxes: N tensors ``(k, 4)`` float32, ``x1, y1, x2, y2`` in pixels.
        labels: N tensors ``(k,)`` int64, 0-based class indices into :data:`CLASSES`.
    """

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None):
        """Yield ``(images, boxes, labels)`` minibatches (the last one may be smaller)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield (
                self.images[idx],
                [self.boxes[j] for j in idx.tolist()],
                [self.labels[j] for j in idx.tolist()],
            )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    if kind == "noise":
        base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
        coarse = rng.uniform(-0.25, 0.25, (3, size // 8, size // 8)).astype(np.float32)
        img = base[:, None, None] + np.kron(coarse, np.ones((8, 8), np.float32))
    elif kind == "gradient":
        c0, c1 = rng.uniform(0.0, 1.0, (2, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        t = (math.cos(angle) * xx + math.sin(angle) * yy + 1.5) / 3.0
        img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
    else:
        c0, c1 = rng.uniform(0.1, 0.9, (2, 3)).astype(np.float32)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(5, 14)
        phase = (math.cos(angle) * xx + math.sin(angle) * yy) * (size - 1) / period
        t = (np.sin(2 * math.pi * phase) > 0).astype(np.float32)
        img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
    return img


def _shape_mask(kind: int, box: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a shape filling ``box`` (x1, y1, x2, y2), sampled at pixel centres."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    u, v = (xx - cx) / (w / 2), (yy - cy) / (h / 2)  # [-1, 1] inside the box
    inside = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    name = CLASSES[kind]
    if name == "circle":
        return u**2 + v**2 <= 1
    if name == "square":
        return inside
    if name == "triangle":
        up = rng.random() < 0.5
        vv = v if up else -v
        return inside & (np.abs(u) <= (vv + 1) / 2)
    bar = rng.uniform(0.25, 0.4)
    return inside & ((np.abs(u) <= bar) | (np.abs(v) <= bar))


def make_detection_data(
    n: int, *, size: int = 64, max_objects: int = 4, seed: int = 0
) -> DetectionData:
    """Generate ``n`` images of ``size`` x ``size`` with their boxes and labels.

    The same arguments give the same data, bit for bit.

    Raises:
        UserError: ``n`` < 1, ``size`` < 32 or ``max_objects`` < 1.
    """
    if n < 1 or size < 32 or max_objects < 1:
        raise UserError(
            f"detection data needs n >= 1, size >= 32 and max_objects >= 1, not n={n}, "
            f"size={size}, max_objects={max_objects}"
        )
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), np.float32)
    all_boxes, all_labels = [], []
    for i in range(n):
        img = _texture(rng, size)
        boxes: list[np.ndarray] = []
        labels: list[int] = []
        want = int(rng.integers(1, max_objects + 1))
        for _ in range(20 * want):
            if len(boxes) == want:
                break
            side = rng.uniform(MIN_SIZE, MAX_SIZE)
            aspect = math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
            w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
            w, h = min(w, size - 1), min(h, size - 1)
            x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            box = np.array([x1, y1, x1 + w, y1 + h], np.float32)
            if any(_iou(box, b) > MAX_OVERLAP for b in boxes):
                continue
            kind = int(rng.integers(len(CLASSES)))
            colour = PALETTE[rng.integers(len(PALETTE))]
            mask = _shape_mask(kind, box, size, rng)
            if not mask.any():
                continue
            img[:, mask] = colour[:, None] * rng.uniform(0.85, 1.0)
            boxes.append(box)
            labels.append(kind)
        img += rng.normal(0.0, 0.04, img.shape).astype(np.float32)
        images[i] = np.clip(img, 0.0, 1.0)
        all_boxes.append(torch.from_numpy(np.stack(boxes)))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    return DetectionData(torch.from_numpy(images), all_boxes, all_labels)
