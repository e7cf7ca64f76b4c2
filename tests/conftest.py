"""Shared fixtures: the real data in ../shared, and small models built on the fly.

Tests that need ../shared skip with the reason when it is absent; they never
pass without running.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEKIT_SHARED", REPO.parent / "shared"))
CIFAR_DIR = SHARED / "data" / "cifar10"
RESNET20 = SHARED / "models" / "resnet20-12fca82f.th"
RESNET20_TOP1 = 91.73  # measured FP32 top-1 of the shared checkpoint on the real test set


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (set EDGEKIT_SHARED)")
    return path


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """../shared/data/cifar10 (skips when absent)."""
    _need(CIFAR_DIR / "cifar10-test.npz")
    return _need(CIFAR_DIR)


@pytest.fixture(scope="session")
def resnet20_weights() -> Path:
    """The public pretrained CIFAR-10 ResNet-20 (skips when absent)."""
    return _need(RESNET20)


@pytest.fixture(scope="session")
def cifar10(cifar_dir):
    """The real CIFAR-10 as an edgekit Dataset (50,000 train / 10,000 test)."""
    from edgekit.data import load_dataset

    return load_dataset(f"npz:{cifar_dir}")


@pytest.fixture(scope="session")
def resnet20_workspace(tmp_path_factory, cifar_dir, resnet20_weights):
    """A work directory with the shared ResNet-20 exported on real CIFAR-10 (built once)."""
    from edgekit.pipeline import ModelSpec, prepare

    spec = ModelSpec(dataset=f"npz:{cifar_dir}", model="resnet20", weights=str(resnet20_weights))
    return prepare(spec, tmp_path_factory.mktemp("r20"), log=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    """A small synthetic 10-class npz pair (40 train / 20 test images per file, 32x32 RGB).

    The classes differ in mean colour, so even a tiny model learns them.
    """
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, per in (("train", 8), ("test", 4)):
        y = np.repeat(np.arange(10), per)
        base = (y[:, None, None, None] * 25).astype(np.int16)
        x = np.clip(base + rng.integers(-20, 20, (len(y), 32, 32, 3)), 0, 255).astype(np.uint8)
        np.savez(d / f"tiny-{split}.npz", x=x, y=y)
    return d


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory, tiny_npz):
    """A work directory with an untrained ResNet-8 on tiny_npz, exported (fast)."""
    from edgekit.pipeline import ModelSpec, prepare

    spec = ModelSpec(dataset=f"npz:{tiny_npz}", model="resnet8", epochs=1, exporter="torchscript")
    return prepare(spec, tmp_path_factory.mktemp("tinyws"), log=lambda *_: None)
