"""Calibration statistics (array API, on NumPy here) against hand-computed examples,
calibration batching, and the calibration cache key."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.calibration import (
    CalibrationCache,
    RangeCollector,
    abs_histogram,
    cache_key,
    check_batch,
    device_batches,
    entropy_threshold,
    hash_array,
    kl_divergence,
    percentile_threshold,
)
from edgekit.errors import EdgekitError


def test_minmax_ranges_by_hand():
    c = RangeCollector(method="minmax")
    c.update_minmax(
        {
            "a": np.array([[-3.0, 1.0], [2.0, 0.5]], np.float32),
            "relu": np.array([0.0, 2.0], np.float32),
        }
    )
    c.update_minmax({"a": np.array([4.0], np.float32), "relu": np.array([1.5], np.float32)})
    assert c.mins["a"] == -3.0 and c.maxs["a"] == 4.0
    # symmetric: (-amax, amax); a non-negative tensor (after ReLU) keeps (0, amax)
    assert c.ranges() == {"a": (-4.0, 4.0), "relu": (0.0, 2.0)}


def test_abs_histogram_by_hand():
    x = np.array([-0.1, 0.3, 0.6, -0.9, 1.0, 2.5], np.float32)
    # |x| over [0, 1] in 4 bins: 0.1 | 0.3 | 0.6 | 0.9, 1.0 and 2.5 (clipped into the last)
    assert abs_histogram(x, 1.0, 4).tolist() == [1, 1, 1, 3]


def test_percentile_by_hand():
    h = np.array([1, 1, 1, 3])
    # cumulative fractions 1/6, 2/6, 3/6, 1: 50 % of |x| lies below the edge of bin 3 (0.75)
    assert percentile_threshold(h, 1.0, 50) == pytest.approx(0.75)
    assert percentile_threshold(h, 1.0, 100) == pytest.approx(1.0)
    assert percentile_threshold(h, 1.0, 10) == pytest.approx(0.25)
    with pytest.raises(EdgekitError):
        percentile_threshold(h, 1.0, 0)


def test_entropy_by_hand():
    """hist [4, 2, 0, 1] over [0, 4], 2 quantized levels (TensorRT's algorithm, small).

    i=2: P = [4, 2+1]/7, Q = [4, 2]/6: KL = 4/7 ln(6/7) + 3/7 ln(9/7) = 0.01961
    i=3: P = [4, 2, 1]/7, Q = [4, 2, 0]/6: P>0 where Q=0, KL huge
    i=4: P = [4, 2, 0, 1]/7, Q = chunks [4,2]->[3,3], [0,1]->[0,1]: /7:
         KL = 4/7 ln(4/3) + 2/7 ln(2/3) = 0.04854
    -> i* = 2, threshold = 2 bins * width 1 = 2.0
    """
    p = np.array([4, 3]) / 7
    q = np.array([4, 2]) / 6
    assert kl_divergence(p, q) == pytest.approx(4 / 7 * math.log(6 / 7) + 3 / 7 * math.log(9 / 7))
    h = np.array([4, 2, 0, 1])
    assert entropy_threshold(h, 4.0, 2, ignore_zero_bin=False) == pytest.approx(2.0)
    # with a heavier tail the full range wins: [1, 1, 1, 1] -> no clipping pays
    assert entropy_threshold(np.array([1, 1, 1, 1]), 4.0, 2, ignore_zero_bin=False) == 4.0
    # default: the zero bin is replaced by its neighbour, [2, 2, 0, 1]; at i=4 Q = P, KL 0
    assert entropy_threshold(h, 4.0, 2) == pytest.approx(4.0)


def test_entropy_clips_an_outlier_that_minmax_keeps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000).astype(np.float32)
    x[0] = 40.0  # one outlier
    c = RangeCollector(method="entropy")
    c.update_minmax({"t": x})
    c.update_hist({"t": x})
    t = c.thresholds()["t"]
    assert 2.0 < t < 10.0, t  # Gaussian bulk kept, the outlier clipped
    p = RangeCollector(method="percentile", percentile=99.9)
    p.update_minmax({"t": x})
    p.update_hist({"t": x})
    assert p.thresholds()["t"] == pytest.approx(3.29, abs=0.05)  # 99.9 % of |N(0,1)|


def test_unknown_method():
    with pytest.raises(EdgekitError, match="unknown calibration method"):
        RangeCollector(method="mse")


def test_calibration_batch_with_wrong_shape_is_refused():
    with pytest.raises(EdgekitError, match="expected \\[N, C, H, W\\]"):
        check_batch(np.zeros((4, 32, 32), np.float32))
    with pytest.raises(EdgekitError, match="axis 2"):
        check_batch(np.zeros((4, 3, 28, 28), np.float32), ["batch", 3, 32, 32])
    with pytest.raises(EdgekitError, match="float32"):
        check_batch(np.zeros((4, 3, 32, 32), np.float64))
    check_batch(np.zeros((4, 3, 32, 32), np.float32), ["batch", 3, 32, 32])


def test_device_batches_cpu():
    x = np.arange(10 * 3 * 2 * 2, dtype=np.float32).reshape(10, 3, 2, 2)
    b, dev = device_batches(x, 4, "cpu")
    assert dev == "cpu" and [len(i) for i in b] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(b), x)
    with pytest.raises(EdgekitError):
        device_batches(x, 0, "cpu")


def test_cache_key_changes_with_model_and_calibration_set():
    x = np.zeros((2, 3, 4, 4), np.float32)
    y = x.copy()
    y[1, 2, 3, 3] = 1e-3  # one pixel
    k = cache_key("aa" * 32, hash_array(x), {"method": "entropy"})
    assert k == cache_key("aa" * 32, hash_array(x.copy()), {"method": "entropy"})
    assert k != cache_key("ab" * 32, hash_array(x), {"method": "entropy"})  # model changed
    assert k != cache_key("aa" * 32, hash_array(y), {"method": "entropy"})  # images changed
    assert k != cache_key("aa" * 32, hash_array(x[::-1].copy() + 0), {"method": "minmax"})
    assert hash_array(x) != hash_array(x.reshape(2, 3, 16))  # shape is part of the hash


def test_cache_roundtrip_and_corruption(tmp_path):
    c = CalibrationCache(tmp_path)
    assert c.load_ranges("k" * 64) is None
    c.save_ranges("k" * 64, {"t": (-1.0, 2.0)})
    assert c.load_ranges("k" * 64) == {"t": (-1.0, 2.0)}
    assert c.load_ranges("j" * 64) is None
    c.path("k" * 64).write_text("{not json")
    assert c.load_ranges("k" * 64) is None  # corrupt: recomputed, never trusted
    c.save_blob("k" * 64, b"TRT-calib")
    assert c.load_blob("k" * 64) == b"TRT-calib"
