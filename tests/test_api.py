"""The Python API (issue 15): a notebook's view of edgekit, and the CLI built on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgekit
from edgekit.errors import EdgekitError, UnavailableError

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=env,
    )


def test_notebook_exports_builds_and_benchmarks_an_in_memory_module(tmp_path, tiny_npz):
    """As a notebook would: a plain nn.Sequential, no factory, no files of its own."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    work = tmp_path / "work"
    logs: list[str] = []
    exp = edgekit.export(
        net, f"npz:{tiny_npz}", work_dir=work, exporter="torchscript", log=logs.append
    )
    assert exp.model == "in-memory Sequential"
    assert exp.checkpoint is None and exp.onnx.is_file()
    assert exp.export_check["top1_agreement"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # not changed
    rec = json.loads((work / "edgekit.json").read_text())
    assert Path(rec["dataset"][4:]).is_absolute()  # the npz path, recorded absolute

    built = edgekit.build(work, "ort-cpu,pytorch-fp32", log=logs.append)
    by = {a.target: a for a in built.artifacts}
    assert by["ort-cpu"].status == "ok" and by["ort-cpu"].size_mb > 0
    # no factory can rebuild an in-memory module in the benchmark's process: said, not hidden
    assert by["pytorch-fp32"].status == "unavailable"
    assert "in-memory" in by["pytorch-fp32"].reason
    assert not built.ok
    with pytest.raises(UnavailableError):
        edgekit.build(work, ["pytorch-fp32"], errors="raise")

    res = edgekit.benchmark(
        work, ["ort-cpu"], quick=True, isolate=False, threads=1, log=logs.append
    )
    assert res.ok
    records = res.to_records()
    assert [r["target"] for r in records] == ["ort-cpu"]
    r = records[0]
    assert r["status"] == "ok" and r["latency_p50_ms"] > 0 and 0 <= r["top1"] <= 100
    # pandas-friendly: flat, every value a scalar
    assert all(not isinstance(v, (dict, list)) for v in r.values())
    assert built.to_records()[0]["path"].endswith("ort-cpu")
    out = res.save(tmp_path / "bench.json")
    assert json.loads(out.read_text())["rows"][0]["target"] == "ort-cpu"

    cmp = edgekit.compare(
        work / "artifacts" / "ort-cpu", work / "artifacts" / "ort-cpu", work_dir=work, images=20
    )
    assert cmp.top1_agreement == 1.0 and cmp.max_abs_diff == 0.0
    assert cmp.to_records()[0]["a_target"] == "ort-cpu"


def test_api_names_survive_importing_the_submodules_of_the_same_name():
    import edgekit.build  # noqa: F401  (the builder module)
    import edgekit.compare  # noqa: F401
    import edgekit.export  # noqa: F401
    from edgekit.export import export_onnx

    assert callable(export_onnx)
    for name in ("export", "build", "benchmark", "compare", "run"):
        assert getattr(edgekit, name) is getattr(edgekit.api, name)


def test_import_edgekit_imports_no_torch():
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, edgekit; edgekit.BenchmarkResult; print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == "False", r.stderr


def test_target_names_one_vocabulary():
    from edgekit.api import target_names

    assert target_names(["a,b", "c", "a"]) == ["a", "b", "c"]
    assert target_names("a, b") == ["a", "b"]
    assert target_names(None) is None and target_names([" , "]) is None


def test_in_memory_module_refuses_weights(tmp_path):
    from torch import nn

    with pytest.raises(EdgekitError, match="in-memory module takes no weights"):
        edgekit.export(nn.Linear(2, 2), weights=tmp_path / "w.pt", work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_run_with_a_misspelt_target_exits_2_fast_and_writes_nothing(tmp_path):
    t0 = time.perf_counter()
    r = _cli("run", "--targets", "ort-cpu,ort-cpu-in8", "-w", tmp_path / "w")
    took = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    assert "unknown target 'ort-cpu-in8'" in r.stderr
    assert "Traceback" not in r.stderr
    assert took < 5, took
    assert not (tmp_path / "w").exists()


def test_run_refuses_a_bad_prune_ratio_before_any_work(tmp_path):
    with pytest.raises(EdgekitError, match="--prune-ratio must be in"):
        edgekit.run("resnet8", work_dir=tmp_path / "w", prune_ratio=1.5)
    assert not (tmp_path / "w").exists()


def test_bench_takes_comma_lists_and_says_unknown_target(tmp_path, tiny_workspace):
    r = _cli("bench", "-w", tiny_workspace.root, "-t", "ort-cpu,ort-cpu-in8")
    assert r.returncode == 2
    assert "unknown target 'ort-cpu-in8'" in r.stderr
    r = _cli("bench", "-w", tiny_workspace.root, "--target-file", tmp_path / "none.toml")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_version_and_plain_usage_lines():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"edgekit {edgekit.__version__}")
    r = _cli("compare", "--help")
    assert "compare [OPTIONS] REFERENCE CANDIDATE" in r.stdout


def test_workspace_from_another_directory_and_a_missing_dataset(tmp_path, tiny_npz):
    """Paths in edgekit.json are absolute; a missing one says where it came from."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_npz, data)
    r = _cli(
        "export", "-d", "npz:data", "-m", "resnet8", "--epochs", "0", "-w", "ws",
        "--exporter", "torchscript", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "ws" / "edgekit.json").read_text())
    assert rec["dataset"] == f"npz:{data}"
    from edgekit.pipeline import Workspace, load_workspace_dataset

    assert len(load_workspace_dataset(Workspace(tmp_path / "ws").record()).test) == 40
    shutil.rmtree(data)
    with pytest.raises(EdgekitError, match="recorded in the work directory's edgekit.json"):
        load_workspace_dataset(Workspace(tmp_path / "ws").record())


def test_quantizer_deprecation_line_does_not_leak_from_the_int8_runner(tiny_workspace, tmp_path):
    """The C++ `Quantizer.cpp` deprecation (printed once per process by torch.jit.load of a
    quantized module) is held back; a fresh process shows whether it leaks."""
    tf = tmp_path / "t.toml"
    tf.write_text(
        'name = "ts-int8-tiny"\nbackend = "torchscript"\nprecision = "int8"\n'
        "[options]\ncalib_per_class = 2\n"
    )
    edgekit.build(
        tiny_workspace.root, "ts-int8-tiny", target_files=[tf], force=True, errors="raise"
    )
    art = tiny_workspace.artifact_dir("ts-int8-tiny")
    code = (
        "import sys, os; from edgekit.build import open_artifact;"
        f"r, _ = open_artifact({str(art)!r}, 1); os.write(2, b'other native line\\n')"
    )
    probe = (
        "from edgekit.backends.torchscript import native_stderr_without;"
        "import os\n"
        "with native_stderr_without('Quantizer'):\n"
        "    os.write(2, b'[W] Quantizer.cpp:1] Warning: x\\nkept line\\n')\n"
    )
    for src, gone, kept in ((code, "Quantizer.cpp", None), (probe, "Quantizer", "kept line")):
        r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert gone not in r.stderr, r.stderr
        if kept:
            assert kept in r.stderr
