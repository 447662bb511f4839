"""Data specs: how a user names a classification data set on the command line.

- ``digits``: scikit-learn's bundled handwritten digits (1797 8x8 grey images, 10
  classes; shipped with scikit-learn, nothing is downloaded), resized to the model's
  input size and repeated to its channel count. A fixed stratified 80/20 train/val
  split.
- ``npz:PATH``: a NumPy ``.npz`` with ``images`` (N,H,W or N,C,H,W; uint8 0-255 or
  floats) and ``labels`` (N integers 0..K-1); optional ``val_images``/``val_labels``,
  otherwise a fixed stratified 80/20 split.
- ``imagefolder:PATH``: a torchvision ``ImageFolder`` tree (one folder per class);
  ``PATH/train`` and ``PATH/val`` if both exist, else a fixed 80/20 split of ``PATH``.
  Needs torchvision at run time.

Images are resized to the requested size and normalised with the training split's
per-channel mean and standard deviation (ImageNet statistics for ``imagefolder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lut_builder.fileio import input_file

from ..errors import UserError

#: The split is fixed: the seed of a run changes initialisation and batches, never
#: which images are held out.
SPLIT_SEED = 0
VAL_FRACTION = 0.2
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(UserError):
    """A data spec that does not load: unknown form, missing file, bad arrays."""


@dataclass
class ImageData:
    """A classification data set ready for training.

    Attributes:
        train, val: ``torch.utils.data.Dataset`` of ``(image C,H,W float32, label)``.
        num_classes: number of classes.
        spec: the spec it came from.
        image_shape: ``(C, H, W)`` of every image.
    """

    train: Any
    val: Any
    num_classes: int
    spec: str
    image_shape: tuple[int, int, int]

    def describe(self) -> str:
        c, h, w = self.image_shape
        return (
            f"{self.spec}: {len(self.train)} train / {len(self.val)} val images, "
            f"{c}x{h}x{w}, {self.num_classes} classes"
        )


def load_data(spec: str, *, channels: int, size: tuple[int, int]) -> ImageData:
    """Load a data spec for a model taking ``channels`` x ``size`` images.

    Args:
        spec: ``digits``, ``npz:PATH`` or ``imagefolder:PATH``.
        channels: image channels the model expects (1 or 3 for ``digits``; grey
            images are repeated to 3 channels).
        size: ``(H, W)`` the images are resized to.

    Returns:
        An :class:`ImageData`.

    Raises:
        DataError: unknown spec, missing or malformed file, channel counts that do
            not fit, torchvision missing for ``imagefolder``.
    """
    spec = (spec or "").strip()
    if channels < 1 or min(size) < 1:
        raise DataError(f"bad image shape {channels}x{size[0]}x{size[1]}")
    if spec == "digits":
        return _digits(channels, size)
    kind, _, path = spec.partition(":")
    if kind == "npz" and path:
        return _npz(spec, Path(path), channels, size)
    if kind == "imagefolder" and path:
        return _imagefolder(spec, Path(path), channels, size)
    raise DataError(f"data spec {spec!r} is not one of digits, npz:PATH, imagefolder:PATH")


def fixed_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, stratified train/val split: ``ceil(VAL_FRACTION * N)`` images held out,
    ``(train indices, val indices)``, each sorted. The same labels give the same split.

    Each class gives its share of the held-out images (largest remainders round), chosen
    by a permutation seeded with :data:`SPLIT_SEED`.
    """
    n = labels.size
    n_val = int(np.ceil(VAL_FRACTION * n))
    if n < 2 or n_val >= n:
        raise DataError(f"cannot split {n} images into train and val")
    rng = np.random.default_rng(SPLIT_SEED)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n_val / n
    take = np.floor(share).astype(int)
    order = np.lexsort((classes, -(share - take)))  # largest remainder first, then class
    take[order[: n_val - take.sum()]] += 1
    val = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(labels == c)
        val.append(rng.permutation(members)[:k])
    va = np.sort(np.concatenate(val))
    tr = np.setdiff1d(np.arange(n), va)
    return tr, va


def _to_tensor(images: np.ndarray, channels: int, size: tuple[int, int], what: str) -> torch.Tensor:
    """N,H,W or N,C,H,W array -> float N,channels,H',W' in [0, 1]-ish, resized."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(f"{what}: images must be N,H,W or N,C,H,W, not shape {images.shape}")
    if images.dtype == np.uint8:
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
    elif np.issubdtype(images.dtype, np.number):
        x = torch.from_numpy(images.astype(np.float32))
    else:
        raise DataError(f"{what}: images have dtype {images.dtype}, not numbers")
    if not torch.isfinite(x).all():
        raise DataError(f"{what}: images contain NaN or infinite values")
    c = x.shape[1]
    if c != channels:
        if c != 1:
            raise DataError(f"{what}: images have {c} channels but the model takes {channels}")
        x = x.expand(-1, channels, -1, -1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.contiguous()


def _normalised(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _tensor_data(
    spec: str,
    tr_x: torch.Tensor,
    tr_y: np.ndarray,
    va_x: torch.Tensor,
    va_y: np.ndarray,
) -> ImageData:
    from torch.utils.data import TensorDataset

    tr_x, va_x = _normalised(tr_x, va_x)
    num_classes = int(max(tr_y.max(), va_y.max())) + 1
    return ImageData(
        train=TensorDataset(tr_x, torch.from_numpy(tr_y.astype(np.int64))),
        val=TensorDataset(va_x, torch.from_numpy(va_y.astype(np.int64))),
        num_classes=num_classes,
        spec=spec,
        image_shape=tuple(tr_x.shape[1:]),
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (images N,8,8 in 0..16, labels).

    Read straight from the CSV that scikit-learn ships (importing scikit-learn itself
    takes seconds); ``sklearn.datasets.load_digits`` is the fallback.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for root in locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.ndim == 2 and table.shape[1] == 65:
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("the digits data set needs scikit-learn") from exc
    d = load_digits()
    return d.images, d.target.astype(np.int64)


def _digits(channels: int, size: tuple[int, int]) -> ImageData:
    raw, labels = _digits_arrays()
    images = (raw / 16.0).astype(np.float32)  # 0..16 grey levels
    tr, va = fixed_split(labels)
    x = _to_tensor(images, channels, size, "digits")
    return _tensor_data("digits", x[tr], labels[tr], x[va], labels[va])


def _labels(arr: Any, what: str, n: int) -> np.ndarray:
    y = np.asarray(arr)
    if y.ndim != 1 or y.size != n:
        raise DataError(f"{what}: labels must be a 1-D array of {n} entries, not shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{what}: labels must be integers, not {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{what}: labels must be 0..K-1, found {int(y.min())}")
    return y.astype(np.int64)


def _npz(spec: str, path: Path, channels: int, size: tuple[int, int]) -> ImageData:
    input_file(path, "data file", kind="an .npz file", error=DataError)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zip, pickle or format errors all mean "not our npz"
        raise DataError(
            f"{str(path)!r} is not a readable .npz file: {type(exc).__name__}: {exc}"
        ) from exc
    missing = [k for k in ("images", "labels") if k not in arrays]
    if missing:
        raise DataError(
            f"{str(path)!r} has no array {' or '.join(repr(m) for m in missing)} "
            f"(found: {', '.join(sorted(arrays)) or 'nothing'})"
        )
    images = arrays["images"]
    if images.shape[0] < 2:
        raise DataError(f"{str(path)!r} holds {images.shape[0]} images; need at least 2")
    labels = _labels(arrays["labels"], str(path), images.shape[0])
    x = _to_tensor(images, channels, size, str(path))
    if "val_images" in arrays or "val_labels" in arrays:
        if not {"val_images", "val_labels"} <= set(arrays):
            raise DataError(f"{str(path)!r} needs both val_images and val_labels")
        vx = _to_tensor(arrays["val_images"], channels, size, str(path))
        vy = _labels(arrays["val_labels"], str(path), vx.shape[0])
        return _tensor_data(spec, x, labels, vx, vy)
    tr, va = fixed_split(labels)
    return _tensor_data(spec, x[tr], labels[tr], x[va], labels[va])


def _imagefolder(spec: str, path: Path, channels: int, size: tuple[int, int]) -> ImageData:
    if path.exists() and not path.is_dir():
        raise DataError(f"image folder {str(path)!r} is not a directory")
    if not path.is_dir():
        raise DataError(f"image folder {str(path)!r} does not exist")
    try:
        from torchvision import datasets, transforms
    except Exception as exc:  # no build for this platform fails with more than ImportError
        raise DataError(
            f"imagefolder data needs torchvision, which is not usable here "
            f"({type(exc).__name__}: {exc}); install torchvision or use npz:PATH"
        ) from exc
    mean = _IMAGENET_MEAN if channels == 3 else (0.5,) * channels
    std = _IMAGENET_STD if channels == 3 else (0.25,) * channels
    grey = [transforms.Grayscale(channels)] if channels in (1,) else []
    common = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train_tf = transforms.Compose(
        [
            *grey,
            transforms.RandomResizedCrop(tuple(size), scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(),
            *common,
        ]
    )
    short = int(round(min(size) / 0.875))
    val_tf = transforms.Compose(
        [*grey, transforms.Resize(short), transforms.CenterCrop(tuple(size)), *common]
    )
    try:
        if (path / "train").is_dir() and (path / "val").is_dir():
            train = datasets.ImageFolder(path / "train", transform=train_tf)
            val = datasets.ImageFolder(path / "val", transform=val_tf)
            if val.classes != train.classes:
                raise DataError(f"{str(path)!r}: train and val have different class folders")
        else:
            full_train = datasets.ImageFolder(path, transform=train_tf)
            full_val = datasets.ImageFolder(path, transform=val_tf)
            tr, va = fixed_split(np.asarray(full_train.targets))
            from torch.utils.data import Subset

            train, val = Subset(full_train, tr.tolist()), Subset(full_val, va.tolist())
            train.classes = full_train.classes  # type: ignore[attr-defined]
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"image folder {str(path)!r} does not load: {exc}") from exc
    return ImageData(
        train=train,
        val=val,
        num_classes=len(train.classes),
        spec=spec,
        image_shape=(channels, int(size[0]), int(size[1])),
    )
