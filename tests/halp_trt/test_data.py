"""Data specs: digits, npz, imagefolder, and the errors a user can cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from halp_trt.errors import UserError
from halp_trt.train import DataError, load_data


def test_digits_resized_to_model_channels_with_fixed_stratified_split():
    a = load_data("digits", channels=1, size=(32, 32))
    b = load_data("digits", channels=3, size=(16, 16))
    assert (len(a.train), len(a.val)) == (1437, 360)
    assert a.num_classes == 10 and a.image_shape == (1, 32, 32)
    assert b.image_shape == (3, 16, 16)
    x, _ = b.train[0]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey repeated
    # Same split whatever the size or channels; every class in val.
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert set(a.val.tensors[1].tolist()) == set(range(10))
    train_x = a.train.tensors[0]
    assert abs(train_x.mean().item()) < 1e-4 and abs(train_x.std().item() - 1) < 1e-3
    assert "1437 train / 360 val" in a.describe()
    counts = np.bincount(a.val.tensors[1].numpy())
    assert counts.min() >= 35 and counts.max() <= 37  # stratified


def test_digits_read_directly_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    from halp_trt.train.data import _digits_arrays

    images, labels = _digits_arrays()
    ref = load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(labels, ref.target)


def test_npz_grey_uint8_is_scaled_resized_and_split(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 6, 6), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 10)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    d = load_data(f"npz:{tmp_path / 'd.npz'}", channels=3, size=(12, 12))
    assert (len(d.train), len(d.val)) == (40, 10)
    assert d.num_classes == 5 and d.image_shape == (3, 12, 12)
    assert sorted(d.val.tensors[1].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_npz_nchw_with_explicit_val_arrays(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "d.npz",
        images=rng.random((12, 3, 8, 8), dtype=np.float32),
        labels=np.arange(12) % 3,
        val_images=rng.random((4, 3, 8, 8), dtype=np.float32),
        val_labels=np.array([0, 1, 2, 0]),
    )
    d = load_data(f"npz:{tmp_path / 'd.npz'}", channels=3, size=(8, 8))
    assert (len(d.train), len(d.val), d.num_classes) == (12, 4, 3)


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"images": np.zeros((4, 8, 8))}, "no array 'labels'"),
        (
            {"images": np.zeros((4, 2, 8, 8)), "labels": np.zeros(4, int)},
            "2 channels but the model takes 3",
        ),
        ({"images": np.zeros((4, 8)), "labels": np.zeros(4, int)}, "must be N,H,W or N,C,H,W"),
        ({"images": np.zeros((4, 8, 8)), "labels": np.zeros(3, int)}, "1-D array of 4"),
        ({"images": np.zeros((4, 8, 8)), "labels": np.array([0, 1, -1, 0])}, "0..K-1"),
        ({"images": np.full((4, 8, 8), np.nan), "labels": np.zeros(4, int)}, "NaN"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as err:
        load_data(f"npz:{tmp_path / 'bad.npz'}", channels=3, size=(8, 8))
    assert isinstance(err.value, UserError)


def test_unloadable_specs(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    cases = [
        ("mnist", "is not one of digits"),
        ("npz:", "is not one of digits"),
        (f"npz:{tmp_path / 'missing.npz'}", "does not exist"),
        (f"npz:{tmp_path / 'text.npz'}", "not a readable .npz"),
        (f"imagefolder:{tmp_path / 'nope'}", "does not exist"),
    ]
    for spec, match in cases:
        with pytest.raises(DataError, match=match):
            load_data(spec, channels=3, size=(8, 8))


def test_imagefolder_without_torchvision_says_so(tmp_path):
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is usable here")
    except Exception:
        pass
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="needs torchvision"):
        load_data(f"imagefolder:{tmp_path}", channels=3, size=(8, 8))
