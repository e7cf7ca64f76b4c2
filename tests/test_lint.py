"""ruff is part of the test suite, so CI fails on lint or formatting drift."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff():
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(exe).exists():
        pytest.skip("ruff is not installed (it is in the dev dependency group)")
    return exe


def test_ruff_check():
    res = subprocess.run([_ruff(), "check", "."], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format():
    res = subprocess.run(
        [_ruff(), "format", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
