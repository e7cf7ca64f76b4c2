"""The CUDA paths of training (issue 12): they run only where torch sees a CUDA GPU.

Written against PyTorch's documented API and skipped on the CPU-only development
machine; on a GPU machine run ``pytest -q tests/test_gpu_training.py`` (about a minute).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU visible to torch (none here)"
    ),
]


def _tiny(tiny_npz):
    from edgekit.data import load_dataset
    from edgekit.preprocess import Preprocess

    ds = load_dataset(f"npz:{tiny_npz}")
    return ds, Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), height=32, width=32)


def test_augment_on_the_gpu_equals_the_cpu():
    from edgekit.augment import random_crop_flip

    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, 4, True, torch.Generator().manual_seed(0))
    b = random_crop_flip(x.cuda(), 4, True, torch.Generator().manual_seed(0))
    assert b.is_cuda and torch.equal(a, b.cpu())


def test_resident_and_pinned_placements_give_the_same_batches(monkeypatch):
    import edgekit.loader as loader

    x = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    y = np.arange(100) % 10
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, seed=3, channels_last=True)
    resident = loader.DeviceBatches(x, y, "cuda", 16, **kw)
    assert resident.placement == "device" and resident.x.is_cuda
    lines = []
    monkeypatch.setattr(loader, "fits_in_device_memory", lambda *a: False)
    pinned = loader.DeviceBatches(x, y, "cuda", 16, log=lines.append, **kw)
    assert pinned.placement == "pinned" and pinned.x.is_pinned()
    assert len(lines) == 1 and "does not fit in GPU memory" in lines[0]
    assert "pinned host memory" in lines[0]
    n = 0
    for (xa, ya), (xb, yb) in zip(resident.epoch(1), pinned.epoch(1), strict=True):
        assert xa.is_cuda and xa.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        n += len(ya)
    assert n == 100


def test_fit_on_cuda_with_amp_kd_and_channels_last(tiny_npz):
    import copy

    from edgekit.models import build_model
    from edgekit.train import fit, make_config

    ds, pre = _tiny(tiny_npz)
    torch.manual_seed(0)
    m = build_model("resnet8", 10)
    teacher = copy.deepcopy(m)
    cfg = make_config("cifar-fast", epochs=6, batch_size=16, lr=0.05)
    hist = fit(m, ds.train, pre, cfg, device="cuda")
    assert hist[0]["device"].startswith("cuda")
    assert hist[-1]["loss"] < 0.8 * hist[0]["loss"], [h["loss"] for h in hist]
    assert next(m.parameters()).is_cuda and m.conv1.weight.is_contiguous()
    kd = fit(copy.deepcopy(m), ds.train, pre, make_config(epochs=1), teacher=teacher, device="cuda")
    assert kd and np.isfinite(kd[0]["loss"])


def test_compile_on_cuda_runs_or_says_so(tiny_npz):
    from edgekit.errors import EdgekitError
    from edgekit.models import build_model
    from edgekit.train import fit, make_config

    ds, pre = _tiny(tiny_npz)
    cfg = make_config("cifar-fast", epochs=1, batch_size=16, compile=True)
    try:
        hist = fit(build_model("resnet8", 10), ds.train, pre, cfg, device="cuda")
    except EdgekitError as e:  # the one-line error of a failed compilation, not a crash
        assert "--compile failed" in str(e) and "without --compile" in str(e)
    else:
        assert np.isfinite(hist[0]["loss"])


def test_a_gpu_index_past_the_count_is_refused():
    from edgekit.device import resolve_device
    from edgekit.errors import EdgekitError

    n = torch.cuda.device_count()
    assert resolve_device("auto").type == "cuda"
    with pytest.raises(EdgekitError, match=f"no CUDA device {n}"):
        resolve_device(f"cuda:{n}")
