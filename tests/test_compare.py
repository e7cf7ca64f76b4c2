"""edgekit compare: metrics by hand, and two real artifacts on the same images."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.compare import compare_logits
from edgekit.errors import EdgekitError


def test_compare_logits_by_hand():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[1.0, 0.5], [1.0, 0.0]])
    r = compare_logits(a, b)
    assert r["top1_agreement"] == 0.5
    assert r["max_abs_diff"] == 2.0
    assert r["mean_abs_diff"] == pytest.approx((0 + 0.5 + 1 + 2) / 4)
    assert r["cosine_min"] == pytest.approx(0.0)
    assert r["cosine_mean"] == pytest.approx((1 / np.sqrt(1.25)) / 2)
    with pytest.raises(EdgekitError, match="differ in shape"):
        compare_logits(a, b[:1])


def test_compare_artifacts(tiny_workspace):
    from edgekit.compare import compare_artifacts
    from edgekit.pipeline import build

    build(tiny_workspace, "ort-cpu", force=True)
    build(tiny_workspace, "pytorch-fp32", force=True)
    d = tiny_workspace.artifacts
    r = compare_artifacts(
        d / "pytorch-fp32", d / "ort-cpu", work_dir=tiny_workspace.root, images=20
    )
    assert r["images"] == 20 and r["top1_agreement"] == 1.0
    assert r["max_abs_diff"] < 1e-3 and r["cosine_min"] > 0.9999
    assert r["a"]["top1"] == r["b"]["top1"]
