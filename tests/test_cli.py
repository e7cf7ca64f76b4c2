"""The CLI as a user meets it: one error line, exit status 2, nothing half-written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def edgekit(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_user_error(res, pattern):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    assert pattern in lines[0], lines[0]


def test_help_lists_commands():
    res = edgekit("--help")
    assert res.returncode == 0
    for cmd in ("export", "build", "bench", "run", "targets"):
        assert cmd in res.stdout


def test_missing_weights_file(tmp_path):
    res = edgekit(
        "export", "-w", tmp_path / "w", "--model", "resnet8", "--weights", tmp_path / "nope.pt"
    )
    assert_user_error(res, "checkpoint not found")
    assert not (tmp_path / "w").exists()


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"\x00garbage")
    res = edgekit("export", "-w", tmp_path / "w", "--model", "resnet8", "--weights", bad)
    assert_user_error(res, "cannot read checkpoint")
    assert not (tmp_path / "w").exists()


def test_mismatched_checkpoint(tmp_path, resnet20_weights):
    res = edgekit(
        "export", "-w", tmp_path / "w", "--model", "resnet8", "--weights", resnet20_weights
    )
    assert_user_error(res, "does not match the model; unexpected keys")


def test_unknown_names(tmp_path):
    assert_user_error(
        edgekit("export", "-w", tmp_path, "--model", "resnet19"), "unknown model 'resnet19'"
    )
    assert_user_error(
        edgekit("export", "-w", tmp_path, "--dataset", "mnist"), "unknown dataset 'mnist'"
    )
    assert_user_error(
        edgekit("build", "-w", tmp_path, "--target", "tpu-int4"), "unknown target 'tpu-int4'"
    )


def test_dataset_with_wrong_shape(tmp_path):
    np.savez(tmp_path / "x-train.npz", x=np.zeros((10, 3, 32, 32), np.uint8), y=np.arange(10))
    np.savez(tmp_path / "x-test.npz", x=np.zeros((10, 3, 32, 32), np.uint8), y=np.arange(10))
    res = edgekit("export", "-w", tmp_path / "w", "--dataset", f"npz:{tmp_path}")
    assert_user_error(res, "expected [N, H, W, 3]")
    assert not (tmp_path / "w").exists()


def test_work_dir_with_artifacts_needs_force(tiny_workspace):
    before = tiny_workspace.onnx.read_bytes()
    res = edgekit("export", "-w", tiny_workspace.root, "--model", "resnet8")
    assert_user_error(res, "already holds artifacts")
    assert "--force" in res.stderr
    assert tiny_workspace.onnx.read_bytes() == before


def test_build_and_bench_via_cli(tiny_workspace):
    res = edgekit("build", "-w", tiny_workspace.root, "--target", "ort-cpu", "--force")
    assert res.returncode == 0, res.stderr
    res = edgekit(
        "bench",
        "-w",
        tiny_workspace.root,
        "--target",
        "ort-cpu",
        "--threads",
        "1",
        "--quick",
        "--no-baseline",
    )
    assert res.returncode == 0, res.stderr
    assert "ort-cpu" in res.stdout and "p90 ms" in res.stdout
    report = json.loads((tiny_workspace.root / "bench.json").read_text())
    row = report["rows"][0]
    assert row["status"] == "ok" and row["threads"] == 1
    assert row["latency_ms"]["p50"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["p99"]
    assert 0.0 <= row["top1"] <= 100.0 and row["size_mb"] > 0
    assert_user_error(
        edgekit("bench", "-w", tiny_workspace.root, "--target", "ort-cpu", "--threads", "0"),
        "--threads must be at least 1",
    )


@pytest.mark.slow
def test_run_default_smoke(tmp_path):
    """`edgekit run` with an npz dataset and a user model: rows for the baseline and ort-cpu."""
    res = edgekit(
        "run",
        "-w",
        tmp_path / "w",
        "--model",
        "tests.usermodels:build",
        "--epochs",
        "1",
        "--quick",
        "--targets",
        "ort-cpu",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    names = [r["target"] for r in report["rows"]]
    assert names == ["pytorch-fp32", "ort-cpu"]
    assert all(r["status"] == "ok" for r in report["rows"])
    # same model, same data: FP32 in ONNX Runtime agrees with PyTorch
    assert report["rows"][0]["top1"] == pytest.approx(report["rows"][1]["top1"], abs=0.5)
