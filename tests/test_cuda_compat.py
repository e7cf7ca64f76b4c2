"""edgekit doctor's problems: GPU packages for different CUDA majors, and TensorRT
bindings built for another Python. The package lookups are faked (no GPU here)."""

from __future__ import annotations

import json

import pytest

from edgekit import cuda_compat as cc
from edgekit import doctor as dr
from edgekit import trt_python as tp


@pytest.mark.parametrize(
    ("name", "version", "major"),
    [
        ("cupy-cuda12x", "13.6.0", 12),
        ("cupy_cuda13x", "14.2.0", 13),
        ("onnxruntime-gpu", "1.27.0", 12),
        ("onnxruntime-gpu", "1.28.0", 13),
        ("onnxruntime-gpu", "1.31.1", 13),
        ("nvidia-cudnn-cu12", "9.1", 12),
        ("tensorrt-cu13-bindings", "11.4", 13),
        ("cuda-toolkit", "13.0.3.0", 13),
        ("torch", "2.13.0+cu126", 12),
        ("torch", "2.13.0+cpu", None),
        ("numpy", "2.4", None),
    ],
)
def test_cuda_major_rules(name, version, major):
    assert cc.cuda_major(name, version, machine="x86_64") == major


def test_jetson_onnxruntime_gpu_major_is_unknown():
    # NVIDIA's Jetson index builds onnxruntime-gpu for the JetPack's CUDA, whatever the version
    assert cc.cuda_major("onnxruntime-gpu", "1.31.1", machine="aarch64") is None


def test_torch_major_read_without_import(tmp_path, monkeypatch):
    v = tmp_path / "version.py"
    v.write_text("from typing import Optional\ncuda: Optional[str] = '12.6'\n")
    assert cc.torch_cuda_major(v) == 12
    # a CPU build's version.py says None: then the metadata's local version decides
    v.write_text("cuda: Optional[str] = None\n")
    monkeypatch.setattr(cc.metadata, "version", lambda d: "2.13.0+cpu")
    assert cc.torch_cuda_major(v) is None
    monkeypatch.setattr(cc.metadata, "version", lambda d: "2.13.0+cu130")
    assert cc.torch_cuda_major(v) == 13


def _fake_versions(installed: dict[str, str]):
    return lambda d: installed.get(d)


def test_mismatch_is_a_problem_with_the_fix():
    majors = cc.installed_cuda_majors(
        _fake_versions({"cupy-cuda12x": "13.6.0", "onnxruntime-gpu": "1.31.1"}),
        torch_major=lambda: 13,
        machine="x86_64",
    )
    assert majors == {"cupy-cuda12x 13.6.0": 12, "onnxruntime-gpu 1.31.1": 13, "torch": 13}
    p = cc.mismatch_problem(majors)
    assert "CUDA 12: cupy-cuda12x 13.6.0" in p["problem"]
    assert "CUDA 13: onnxruntime-gpu 1.31.1, torch" in p["problem"]
    assert "uninstall the CUDA 12 packages" in p["fix"] and "cupy-cuda13x" in p["fix"]
    assert "'onnxruntime-gpu>=1.28'" in p["fix"]


def test_one_major_is_no_problem():
    majors = cc.installed_cuda_majors(
        _fake_versions({"cupy-cuda13x": "14.2.0", "onnxruntime-gpu": "1.31.1"}),
        torch_major=lambda: 13,
        machine="x86_64",
    )
    assert set(majors.values()) == {13} and cc.mismatch_problem(majors) is None
    assert cc.mismatch_problem({}) is None


class _Dist:
    """Just what trt_python reads from an importlib.metadata distribution."""

    def __init__(self, name, version, wheel_tag, requires_python, files=()):
        self.metadata = {"Name": name, "Requires-Python": requires_python}
        self.version = version
        self.files = list(files)
        self._wheel = f"Wheel-Version: 1.0\nTag: {wheel_tag}\n"

    def read_text(self, fn):
        return self._wheel if fn == "WHEEL" else None


def test_bindings_for_another_python_name_the_python(tmp_path):
    d = _Dist(
        "tensorrt-cu12-bindings",
        "10.3.0",
        "cp310-none-manylinux_2_28_aarch64",
        ">=3.10,<3.11",
        ["tensorrt_bindings/tensorrt.cpython-310-aarch64-linux-gnu.so"],
    )
    found = tp.find_bindings(dists=[d], system_paths=[])
    assert found == [("tensorrt-cu12-bindings 10.3.0 (Requires-Python >=3.10,<3.11)", {"3.10"})]
    p = tp.bindings_problem("ModuleNotFoundError: No module named 'tensorrt'", False, "3.11", found)
    assert p["problem"].startswith(
        "TensorRT's Python bindings need Python 3.10, this is Python 3.11"
    )
    assert "run edgekit under Python 3.10" in p["fix"]


def test_jetpack_system_bindings_found_by_folder(tmp_path):
    folder = tmp_path / "usr/lib/python3.10/dist-packages/tensorrt"
    folder.mkdir(parents=True)
    (folder / "tensorrt.so").write_bytes(b"")
    found = tp.find_bindings(dists=[], system_paths=[str(folder)])
    assert found == [(str(folder), {"3.10"})]
    p = tp.bindings_problem(None, False, "3.11", found)
    assert "need Python 3.10" in p["problem"] and str(folder) in p["problem"]
    # under the Python they are built for, there is no Python problem; a failing import is
    assert tp.bindings_problem(None, False, "3.10", found) is None
    p = tp.bindings_problem("ImportError: libnvinfer.so.10: cannot open", False, "3.10", found)
    assert p["problem"] == "import tensorrt fails: ImportError: libnvinfer.so.10: cannot open"


def test_no_tensorrt_or_working_tensorrt_is_no_problem():
    assert tp.bindings_problem(None, False, "3.11", []) is None
    assert tp.bindings_problem(None, True, "3.11", [("x", {"3.10"})]) is None


def test_doctor_reports_problems_and_require_gpu_fails(monkeypatch, capsys):
    monkeypatch.setattr(
        cc, "installed_cuda_majors", lambda: {"cupy-cuda12x 13.6.0": 12, "torch": 13}
    )
    monkeypatch.setattr(
        tp, "find_bindings", lambda: [("/usr/lib/python3.10/dist-packages/tensorrt", {"3.10"})]
    )
    rep = dr.doctor()
    kinds = [p["problem"] for p in rep["problems"]]
    assert len(kinds) == 2, kinds
    assert kinds[0].startswith("GPU packages built for different CUDA majors")
    assert kinds[1].startswith("TensorRT's Python bindings need Python 3.10")

    # --require-gpu fails on a problem even where a GPU is found
    rep["gpu"] = {**rep["gpu"], "available": True}
    monkeypatch.setattr(dr, "doctor", lambda target_files=None, artifacts=None: rep)
    monkeypatch.setattr(dr, "print_report", lambda rep, console=None: None)
    from typer.testing import CliRunner

    from edgekit.cli import app

    r = CliRunner().invoke(app, ["doctor", "--require-gpu", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["problems"] == rep["problems"]
    assert "error: --require-gpu: TensorRT's Python bindings need Python 3.10" in r.stderr
