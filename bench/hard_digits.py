"""A harder digits task for the Pareto bench, generated from scikit-learn's digits.

On plain digits at 16x16 a ResNet-18 saturates: dense models score 97.5-97.8% and every
pruning method lands within a point of every other at 0.7x, 0.5x and 0.3x, so the bench
cannot tell them apart. This makes the same 1797 digits hard enough that capacity
matters again, with nothing downloaded:

- each digit (8x8, 0..16) is upsampled to ``--size`` and moved by a random affine map
  (rotation up to +-``--rotate`` degrees, scale 0.85-1.15, shear up to +-0.2, shift up
  to +-2 pixels at 16x16);
- a second, different digit is overlaid at half intensity, shifted so it overlaps
  (clutter a classifier must learn to ignore);
- Gaussian noise of ``--noise`` (fraction of full scale) is added.

The result is an ``npz:PATH`` data spec (``images`` N,H,W uint8, ``labels``), split 80/20
by halp-trt's loader like any other::

    python bench/hard_digits.py --out runs/digits_hard.npz
    python bench/pareto.py --model halp_trt.models:resnet18_cifar --data npz:runs/digits_hard.npz ...

With ``--val-copies K`` the file holds the loader's training split as ``images`` and its
held-out fifth (halp-trt's fixed stratified split, 360 digits) as ``val_images``, each
held-out digit rendered K times (the first rendering is the one the loader would hold
out; the others draw new maps, clutter and noise): the same training, measured on K times
the images. A model at 83% on 360 images is known to +-2 points (one binomial standard
deviation), within which the Pareto bench's methods mostly differ.

The same seed gives the same file. At the default noise (0.15) the Pareto bench's dense
ResNet-18s (3 epochs) score 0.808-0.828 on its validation split (seeds 0-2; 0.975-0.978
on plain digits); at 0.25 a seed-0 model trained the same way scored 0.722.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def make(seed: int = 0, size: int = 16, rotate: float = 25.0, noise: float = 0.15) -> tuple:
    """``(images N,size,size uint8, labels N int64)`` from scikit-learn's digits."""
    base, target = _base(size)
    rng = np.random.default_rng(seed)
    out = np.stack([_render(base, target, i, rng, rotate, noise) for i in range(len(base))])
    return _uint8(out), target.astype(np.int64)


def make_val(
    indices: np.ndarray, copies: int, seed: int = 0, size: int = 16, rotate: float = 25.0,
    noise: float = 0.15,
) -> tuple:  # fmt: skip
    """``copies`` more renderings of the digits ``indices`` (new maps, clutter and
    noise, drawn apart from :func:`make`'s), copy by copy: ``(images, labels)``."""
    base, target = _base(size)
    rng = np.random.default_rng([seed, 1])
    idx = np.tile(np.asarray(indices), copies)
    out = [_render(base, target, int(i), rng, rotate, noise) for i in idx]
    out = np.stack(out) if out else np.empty((0, size, size))
    return _uint8(out), target[idx].astype(np.int64)


def _base(size: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    d = load_digits()
    base = np.stack([zoom(im / 16.0, size / 8, order=1) for im in d.images]).clip(0, 1)
    return base, d.target


def _render(base, target, i: int, rng, rotate: float, noise: float) -> np.ndarray:
    """Digit ``i`` moved by a random affine map, a different digit overlaid, noise added."""
    from scipy.ndimage import affine_transform

    n, size = len(base), base.shape[-1]
    centre = (size - 1) / 2
    a = math.radians(rng.uniform(-rotate, rotate))
    s = rng.uniform(0.85, 1.15)
    sh = rng.uniform(-0.2, 0.2)
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m = m @ np.array([[1.0, sh], [0.0, 1.0]]) / s
    shift = rng.uniform(-2, 2, size=2) * size / 16
    offset = np.array([centre, centre]) - m @ (np.array([centre, centre]) + shift)
    img = affine_transform(base[i], m, offset=offset, order=1, mode="constant")
    # A different digit, half as bright, shifted by a third to a half of the image.
    j = int(rng.integers(n))
    while target[j] == target[i]:
        j = int(rng.integers(n))
    dy, dx = (rng.choice([-1, 1], 2) * rng.uniform(size / 3, size / 2, 2)).round().astype(int)
    other = np.roll(base[j], (dy, dx), axis=(0, 1))
    img = np.maximum(img, 0.5 * other)
    return img + rng.normal(0, noise, img.shape)


def _uint8(images: np.ndarray) -> np.ndarray:
    return (images.clip(0, 1) * 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--rotate", type=float, default=25.0)
    p.add_argument("--noise", type=float, default=0.15)
    p.add_argument(
        "--val-copies",
        type=int,
        default=0,
        help="hold out halp-trt's fixed 20%% of the digits as val_images, each rendered "
        "this many times (the first as the loader would hold it out); 0: one set of "
        "images, split by the loader",
    )
    args = p.parse_args(argv)
    if (
        args.size < 8 or not 0 <= args.noise <= 1 or not 0 <= args.rotate <= 180
        or not 0 <= args.val_copies <= 100
    ):  # fmt: skip
        print("hard_digits.py: error: need --size >= 8, 0 <= --noise <= 1, 0 <= --rotate "
              "<= 180, 0 <= --val-copies <= 100", file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"hard_digits.py: error: {str(out.parent)!r} is not a directory", file=sys.stderr)
        return 2
    images, labels = make(args.seed, args.size, args.rotate, args.noise)
    arrays = {"images": images, "labels": labels}
    if args.val_copies:
        from halp_trt.train.data import fixed_split

        tr, va = fixed_split(labels)
        more = make_val(va, args.val_copies - 1, args.seed, args.size, args.rotate, args.noise)
        arrays = {
            "images": images[tr],
            "labels": labels[tr],
            "val_images": np.concatenate([images[va], more[0]]),
            "val_labels": np.concatenate([labels[va], more[1]]),
        }
    tmp = out.with_name(out.name + ".part.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    val = f", {len(arrays['val_images'])} held out" if args.val_copies else ""
    print(f"{out}: {len(images)} images {args.size}x{args.size}{val}, {labels.max() + 1} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
