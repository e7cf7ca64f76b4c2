"""``--device``: resolution, its one-line errors through the CLI, and where it is recorded.

No GPU is needed: CUDA's presence is simulated by monkeypatching ``torch.cuda`` for the
index checks, and the CLI runs with ``CUDA_VISIBLE_DEVICES=""`` so that no GPU is
visible even on a machine that has one.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from edgekit.device import resolve_device
from edgekit.errors import EdgekitError


def test_auto_and_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(EdgekitError, match=r"no CUDA GPU is visible.*use --device cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(EdgekitError, match="no CUDA GPU"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:0", "cuda:-1", "auto:1", ""])
def test_malformed_specs(bad):
    spec = bad or "  "
    with pytest.raises(EdgekitError, match="is not a device"):
        resolve_device(spec)


def test_cuda_index_is_checked_against_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(EdgekitError, match=r"no CUDA device 2; torch sees 2 GPU\(s\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    "args, want",
    [
        (["train", "--device", "cuda"], "error: --device cuda: no CUDA GPU is visible to torch"),
        (
            ["prune", "--weights", "none.pt", "--out", "o.pt", "--device", "cuda:1"],
            "error: --device cuda:1: no CUDA GPU",
        ),
        (["run", "--device", "gpu"], "error: --device 'gpu' is not a device"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(args, want, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(
        [sys.executable, "-m", "edgekit", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(want), p.stderr
    assert "Traceback" not in p.stderr
    assert not any(tmp_path.iterdir())  # nothing written
