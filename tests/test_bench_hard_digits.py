"""bench/hard_digits.py: a harder digits task, generated the same for the same seed, that
halp-trt's data loader takes as an npz spec; bad arguments write nothing."""

from __future__ import annotations

import numpy as np

from tests.conftest import load_bench


def load():
    return load_bench("hard_digits")


def test_same_seed_same_images_and_the_loader_takes_them(tmp_path):
    from halp_trt.train.data import load_data

    hd = load()
    assert hd.main(["--out", str(tmp_path / "a.npz")]) == 0
    assert hd.main(["--out", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["images"].shape == (1797, 16, 16) and a["images"].dtype == np.uint8
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    assert sorted(set(a["labels"].tolist())) == list(range(10))
    other, _ = hd.make(seed=1)
    assert not np.array_equal(other, a["images"])
    # Harder than the digits: noise everywhere, so almost no pixel is pure background.
    assert (a["images"] == 0).mean() < 0.2
    data = load_data(f"npz:{tmp_path / 'a.npz'}", channels=3, size=(16, 16))
    assert data.num_classes == 10 and len(data.train) + len(data.val) == 1797
    assert not list(tmp_path.glob("*.part*"))


def test_val_copies_hold_out_the_loaders_split_rendered_again(tmp_path):
    from halp_trt.train.data import fixed_split, load_data

    hd = load()
    assert hd.main(["--out", str(tmp_path / "a.npz")]) == 0
    assert hd.main(["--out", str(tmp_path / "v.npz"), "--val-copies", "3"]) == 0
    a, v = np.load(tmp_path / "a.npz"), np.load(tmp_path / "v.npz")
    tr, va = fixed_split(a["labels"])
    # The training images are those the loader trains on without the option...
    assert np.array_equal(v["images"], a["images"][tr])
    assert np.array_equal(v["labels"], a["labels"][tr])
    # ... and the held-out digits are rendered three times, the first as before.
    n = len(va)
    assert v["val_images"].shape == (3 * n, 16, 16)
    assert np.array_equal(v["val_images"][:n], a["images"][va])
    assert np.array_equal(v["val_labels"], np.tile(a["labels"][va], 3))
    assert not np.array_equal(v["val_images"][n : 2 * n], v["val_images"][:n])
    assert not np.array_equal(v["val_images"][2 * n :], v["val_images"][n : 2 * n])
    one = load_data(f"npz:{tmp_path / 'a.npz'}", channels=3, size=(16, 16))
    three = load_data(f"npz:{tmp_path / 'v.npz'}", channels=3, size=(16, 16))
    assert (len(three.train), len(three.val)) == (len(one.train), 3 * len(one.val))
    first = next(iter(three.train))[0]
    assert np.array_equal(first.numpy(), next(iter(one.train))[0].numpy())


def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, capsys):
    hd = load()
    assert hd.main(["--out", str(tmp_path / "x.npz"), "--noise", "2"]) == 2
    assert hd.main(["--out", str(tmp_path / "missing" / "x.npz")]) == 2
    assert hd.main(["--out", str(tmp_path / "x.npz"), "--val-copies", "-1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("hard_digits.py: error:") for line in err)
    assert not list(tmp_path.rglob("*.npz"))
