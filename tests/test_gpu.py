"""GPU checks: they run only where CuPy sees a CUDA device and skip here otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.calibration import cuda_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU (none here)"),
]


def test_array_api_statistics_on_cupy_match_numpy():
    import cupy

    from edgekit.calibration import RangeCollector

    x = np.random.default_rng(0).standard_normal((4, 8, 16, 16)).astype(np.float32)
    out = []
    for arr in (x, cupy.asarray(x)):
        c = RangeCollector(method="entropy")
        c.update_minmax({"t": arr})
        c.update_hist({"t": arr})
        out.append(c.thresholds()["t"])
    assert out[0] == pytest.approx(out[1], rel=1e-6)


def test_device_batches_are_cupy():
    import cupy

    from edgekit.calibration import device_batches

    b, dev = device_batches(np.zeros((10, 3, 4, 4), np.float32), 4, "cuda")
    assert dev == "cuda" and isinstance(b[0], cupy.ndarray)
