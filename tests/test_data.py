import numpy as np
import pytest

from edgekit.data import balanced_indices, load_dataset
from edgekit.errors import EdgekitError
from edgekit.preprocess import NORMALIZATIONS, Preprocess, parse_normalization


def test_digits_is_real_seeded_and_rgb32():
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert a.train.x.shape == (1347, 32, 32, 3) and a.test.x.shape == (450, 32, 32, 3)
    assert a.train.x.dtype == np.uint8 and a.test.y.dtype == np.int64
    assert len(a.train) + len(a.test) == 1797
    assert np.array_equal(a.test.y, b.test.y) and np.array_equal(a.test.x, b.test.x)
    assert set(np.unique(a.test.y)) == set(range(10))
    assert not a.hflip  # digits are not flip-invariant
    assert np.array_equal(a.test.x[..., 0], a.test.x[..., 2])  # grey replicated to RGB


def test_npz_explicit_files_and_test_only(tiny_npz):
    tr, te = tiny_npz / "tiny-train.npz", tiny_npz / "tiny-test.npz"
    ds = load_dataset(f"npz:{tr},{te}")
    assert len(ds.train) == 80 and len(ds.test) == 40 and ds.num_classes == 10
    only = load_dataset(f"npz:{te}")
    assert only.train is None and len(only.test) == 40
    with pytest.raises(EdgekitError, match="no 'train' split"):
        only.split("train")


def test_npz_wrong_shape_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3, 32, 32), np.uint8), y=np.zeros(4, np.int64))
    with pytest.raises(EdgekitError, match=r"expected \[N, H, W, 3\]"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "float.npz", x=np.zeros((4, 32, 32, 3), np.float32), y=np.zeros(4))
    with pytest.raises(EdgekitError, match="uint8"):
        load_dataset(f"npz:{tmp_path / 'float.npz'}")
    np.savez(tmp_path / "noy.npz", x=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(EdgekitError, match="no array 'y'"):
        load_dataset(f"npz:{tmp_path / 'noy.npz'}")


def test_unknown_and_missing_datasets():
    with pytest.raises(EdgekitError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(EdgekitError, match="not found"):
        load_dataset("npz:/nonexistent/test.npz")


def test_real_cifar10_npz(cifar10):
    assert cifar10.train.x.shape == (50000, 32, 32, 3)
    assert cifar10.test.x.shape == (10000, 32, 32, 3)
    assert np.bincount(cifar10.test.y).tolist() == [1000] * 10
    assert cifar10.classes[0] == "airplane" and cifar10.classes[9] == "truck"


def test_balanced_sampler_counts_and_reproducibility():
    y = np.repeat(np.arange(5), [10, 20, 30, 40, 50])
    idx = balanced_indices(y, 7, seed=3)
    assert np.bincount(y[idx]).tolist() == [7] * 5
    assert len(np.unique(idx)) == len(idx)
    assert np.array_equal(idx, balanced_indices(y, 7, seed=3))
    assert not np.array_equal(idx, balanced_indices(y, 7, seed=4))


def test_balanced_sampler_too_few_names_the_class():
    y = np.repeat(np.arange(3), [5, 2, 5])
    with pytest.raises(EdgekitError, match=r"class 1 \('dog'\) has 2 images, fewer than the 3"):
        balanced_indices(y, 3, class_names=["cat", "dog", "cow"])
    with pytest.raises(EdgekitError, match="class 3 .* 0 images"):
        balanced_indices(y, 1, num_classes=4)


def test_preprocess_matches_definition():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    mean, std = NORMALIZATIONS["cifar10"]
    out = Preprocess(4, 4, mean, std).apply(x)
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32
    ref = (x[1, 2, 3, 1] / 255.0 - mean[1]) / std[1]
    assert out[1, 1, 2, 3] == pytest.approx(ref, rel=1e-6)
    with pytest.raises(EdgekitError, match="model takes 32x32"):
        Preprocess().apply(x)


def test_parse_normalization():
    assert parse_normalization("imagenet") == NORMALIZATIONS["imagenet"]
    assert parse_normalization("0.5,0.5,0.5/0.25,0.25,0.25")[1] == (0.25, 0.25, 0.25)
    with pytest.raises(EdgekitError, match="unknown normalization"):
        parse_normalization("0.5/0")


def test_imagefolder_layout_is_resized_and_labelled(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            d = tmp_path / split / label
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40 + i, 50), colour).save(d / f"{i}.png")
    ds = load_dataset(f"imagefolder:{tmp_path}", image_size=32)
    assert ds.classes == ["cat", "dog"]
    assert ds.train.x.shape == (6, 32, 32, 3) and ds.test.x.shape == (6, 32, 32, 3)
    assert ds.test.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.test.x[0, 16, 16].tolist() == [255, 0, 0]  # val/ serves as the test split
    (tmp_path / "val").rename(tmp_path / "other")
    with pytest.raises(EdgekitError, match=r"train/ and test/ \(or val/\)"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_heldout_slice_is_balanced_disjoint_and_reproducible():
    from edgekit.data import heldout_indices, min_images_for_drop

    y = np.repeat(np.arange(4), 30)
    calib = balanced_indices(y, 5, seed=0)
    idx = heldout_indices(y, 42, calib, seed=0)
    assert len(idx) == 42 and len(set(idx)) == 42
    assert not set(idx) & set(calib)
    assert np.bincount(y[idx]).tolist() == [11, 11, 10, 10]
    assert np.array_equal(idx, heldout_indices(y, 42, calib, seed=0))
    with pytest.raises(EdgekitError, match="needs 26 of each class"):
        heldout_indices(y, 104, calib)  # 26 per class but only 25 unused per class
    assert min_images_for_drop(0.1) == 1000
    assert min_images_for_drop(1) == 100
    with pytest.raises(EdgekitError, match=r"\(0, 100\]"):
        min_images_for_drop(0)
