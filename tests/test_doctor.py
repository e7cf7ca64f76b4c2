"""edgekit doctor: the precision rules, the GPU probes, target readiness, --json schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit import doctor as dr
from edgekit.targets import Target

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = json.loads((Path(__file__).parent / "doctor_schema.json").read_text())


@pytest.mark.parametrize(
    ("cc", "fp16", "fp16_tc", "dp4a", "int8_tc"),
    [
        ((5, 0), False, False, False, False),  # Maxwell
        ((5, 3), True, False, False, False),  # Tegra X1 (Jetson Nano)
        ((6, 0), True, False, False, False),  # P100
        ((6, 1), False, False, True, False),  # consumer Pascal: FP16 at 1/64 rate, dp4a
        ((6, 2), True, False, True, False),  # Tegra X2
        ((7, 0), True, True, True, False),  # Volta: FP16-only tensor cores
        ((7, 2), True, True, True, True),  # Xavier
        ((7, 5), True, True, True, True),  # Turing
        ((8, 7), True, True, True, True),  # Orin
        ((11, 0), True, True, True, True),  # Thor
    ],
)
def test_precision_support(cc, fp16, fp16_tc, dp4a, int8_tc):
    s = dr.precision_support(*cc)
    assert (s["fp16_fast"], s["fp16_tensor_cores"], s["int8_dp4a"], s["int8_tensor_cores"]) == (
        fp16,
        fp16_tc,
        dp4a,
        int8_tc,
    )
    assert s["int8_fast"] == dp4a


def test_doctor_here_validates_and_lists_cpu_targets():
    rep = dr.doctor()
    jsonschema.validate(rep, SCHEMA)
    by_name = {t["name"]: t for t in rep["targets"]}
    assert by_name["ort-cpu"]["runnable"] and by_name["ort-cpu"]["reason"] is None
    assert rep["cpu"]["cores"] >= 1 and rep["memory"]["total_mb"] > 0
    if rep["software"]["onnxruntime"]["version"]:
        assert "CPUExecutionProvider" in rep["software"]["onnxruntime"]["providers"]
    if rep["gpu"]["available"]:  # a GPU machine: the devices carry the rules
        d = rep["gpu"]["devices"][0]
        major, minor = map(int, d["compute_capability"].split("."))
        assert d["fp16_fast"] == dr.precision_support(major, minor)["fp16_fast"]
    else:
        assert rep["gpu"]["reason"].startswith("no CUDA GPU found")
        for t in rep["targets"]:
            if t["device"] == "cuda":
                assert not t["runnable"] and t["reason"]


def test_cuda_target_not_runnable_without_gpu(tmp_path):
    f = tmp_path / "torch-cuda.toml"
    f.write_text(
        'name = "torch-cuda"\nbackend = "pytorch"\nprecision = "fp32"\n[requires]\ndevice = "cuda"\n'
    )
    no_gpu = {"available": False, "devices": [], "reason": "no CUDA GPU found (test)"}
    rows = {r["name"]: r for r in dr.target_status(no_gpu, [f])}
    r = rows["torch-cuda"]
    if r["reason"] and "not installed" in r["reason"]:
        pytest.skip("torch is not installed, so the package check answers first")
    assert r == {
        "name": "torch-cuda",
        "backend": "pytorch",
        "precision": "fp32",
        "device": "cuda",
        "runnable": False,
        "reason": "no CUDA GPU found (test)",
    }
    assert rows["ort-cpu"]["runnable"]


def _gpu(cc: tuple[int, int]) -> dict:
    return {
        "available": True,
        "devices": [dr._device(0, "Test GPU", *cc, 1024.0)],
        "reason": None,
    }


@pytest.mark.parametrize(
    ("precision", "cc", "runnable"),
    [
        ("int8", (6, 0), False),
        ("int8", (6, 1), True),
        ("fp16", (6, 1), False),
        ("fp16", (8, 7), True),
    ],
)
def test_cuda_target_needs_fast_precision(monkeypatch, precision, cc, runnable):
    t = Target(name="x", backend="pytorch", precision=precision, requires={"device": "cuda"})
    monkeypatch.setattr("edgekit.targets.load_targets", lambda files=None: {"x": t})
    monkeypatch.setattr("edgekit.targets.unavailable_reason", lambda target: None)
    (row,) = dr.target_status(_gpu(cc))
    assert row["runnable"] is runnable
    if not runnable:
        assert f"{precision.upper()} is not fast" in row["reason"]
        assert f"compute capability {cc[0]}.{cc[1]}" in row["reason"]


def test_missing_backend_module_is_a_reason(monkeypatch):
    t = Target(name="y", backend="tensorrt", precision="fp16", requires={"device": "cuda"})
    monkeypatch.setattr("edgekit.targets.load_targets", lambda files=None: {"y": t})

    def boom(target):
        raise ModuleNotFoundError("No module named 'edgekit.backends.tensorrt'")

    monkeypatch.setattr("edgekit.targets.unavailable_reason", boom)
    (row,) = dr.target_status(_gpu((8, 7)))
    assert not row["runnable"] and "not in this edgekit" in row["reason"]


def test_nvidia_smi_parser(monkeypatch):
    out = "NVIDIA H100 80GB HBM3, 9.0, 81559, 570.86\nOrin (nvgpu), 8.7, [N/A], 540.4.0\n"
    monkeypatch.setattr(dr.shutil, "which", lambda exe: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(
        dr.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=out, stderr=""),
    )
    r = dr._gpus_nvidia_smi()
    assert [d["compute_capability"] for d in r["devices"]] == ["9.0", "8.7"]
    assert r["devices"][0]["memory_mb"] == 81559.0 and r["devices"][1]["memory_mb"] is None
    assert r["devices"][1]["int8_tensor_cores"] and r["cuda_driver"] == "540.4.0"


def test_gpu_info_reports_every_probe_tried(monkeypatch):
    monkeypatch.setattr(dr, "_gpus_cupy", lambda: None)
    monkeypatch.setattr(dr, "_gpus_nvidia_smi", lambda: None)
    g = dr.gpu_info(None)
    assert not g["available"] and "no cupy, torch or nvidia-smi" in g["reason"]


def _cli(*args, env_code: str = "") -> subprocess.CompletedProcess:
    code = f"{env_code}\nimport sys\nfrom edgekit.cli import main\nsys.argv = ['edgekit', *{list(args)!r}]\nmain()"
    env = {**os.environ, "COLUMNS": "250"}  # one table row per line
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_json_validates_and_require_gpu_exit_status():
    p = _cli("doctor", "--json", "--require-gpu")
    rep = json.loads(p.stdout)
    jsonschema.validate(rep, SCHEMA)
    assert {"ort-cpu", "pytorch-fp32"} <= {t["name"] for t in rep["targets"]}
    if rep["gpu"]["available"]:
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode == 1 and "--require-gpu: no CUDA GPU found" in p.stderr


def test_cli_without_torch():
    # sys.modules[name] = None makes find_spec() answer None: torch looks uninstalled.
    p = _cli("doctor", "--json", env_code="import sys; sys.modules['torch'] = None")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    jsonschema.validate(rep, SCHEMA)
    assert rep["software"]["torch"]["version"] is None
    assert rep["software"]["torch"]["quantized_engines"] == []
    rows = {t["name"]: t for t in rep["targets"]}
    assert not rows["pytorch-fp32"]["runnable"]
    assert "torch not installed" in rows["pytorch-fp32"]["reason"]
    table = _cli("doctor", env_code="import sys; sys.modules['torch'] = None")
    assert table.returncode == 0 and "not installed" in table.stdout
    # reasons are printed literally, not read as rich markup ("[build]" survives)
    assert "edgekit-toolchain[build]" in table.stdout


def test_foreign_cpuinfo_under_emulation(monkeypatch):
    """qemu-user shows the host's /proc/cpuinfo: x86 flags on aarch64 are dropped, with a note."""
    fake = {
        "cpu": "Intel(R) Xeon(R)",
        "isa": {"avx2": True, "avx512": True, "vnni": True, "neon": False, "dotprod": False},
    }
    monkeypatch.setattr("edgekit.harness.cpu_flags", lambda: fake)
    monkeypatch.setattr(dr.platform, "machine", lambda: "aarch64")
    c = dr.cpu_info()
    assert not any(c["isa"].values()) and "emulation" in c["note"]
    monkeypatch.setattr(dr.platform, "machine", lambda: "x86_64")
    c = dr.cpu_info()
    assert c["isa"]["avx512"] and "note" not in c
