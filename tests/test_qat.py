"""Issue 16: quantization-aware training to a Q/DQ ONNX that ONNX Runtime runs.

Small and fast: the untrained tiny ResNet-8 workspace, a few optimizer steps. The bar
on the shared ResNet-20 (INT8 top-1 >= PTQ, ORT within 0.1 point of the fake-quantized
PyTorch model) is measured by benchmarks/quantization_control.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edgekit.errors import EdgekitError  # noqa: E402


@pytest.fixture()
def qat_ws(tiny_workspace, tmp_path):
    """A private copy of the tiny work directory (the session one stays untouched)."""
    from edgekit.pipeline import Workspace

    root = tmp_path / "ws"
    shutil.copytree(tiny_workspace.root, root, ignore=shutil.ignore_patterns("artifacts"))
    return Workspace(root)


def test_qat_exports_a_qdq_onnx_that_matches_the_fake_quantized_model(qat_ws):
    from edgekit.build import open_artifact
    from edgekit.manifest import read_manifest
    from edgekit.pipeline import build_context, load_workspace_dataset
    from edgekit.qat import TARGET, QatConfig, run_qat

    ds = load_workspace_dataset(qat_ws.record())
    cfg = QatConfig(epochs=1, steps=3, batch=16, lr=0.01, init_per_class=2)
    m = run_qat(qat_ws, build_context(qat_ws, ds), ds.test, cfg)
    out = qat_ws.artifact_dir(TARGET)
    assert m["target"] == TARGET and m["precision"] == "int8"
    q = m["quantization"]["qat"]
    assert q["training"]["steps"] == 3
    assert q["test_images"] == len(ds.test.y)
    # same model, two runtimes: the predictions agree but for integer vs float rounding,
    # which flips a few of the 40 images of this untrained model (its logits nearly tie)
    assert q["agreement"] >= 85.0
    assert abs(q["ort_top1"] - q["torch_top1"]) <= 5.0
    read_manifest(out, verify=True)  # schema, hashes, int8 bound to quantized operators
    model = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == q["quantize_linear"] > 5
    # weights are stored as INT8 tensors, not FP32 behind a QuantizeLinear
    int8 = [
        t
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2  # not the zero points
    ]
    assert len(int8) == q["int8_weights"] == 8  # ResNet-8: 7 convolutions and the classifier
    assert not [
        t
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2
    ]
    axis = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.attribute]
    assert axis, "weights are quantized per channel (DequantizeLinear with an axis)"
    runner, _ = open_artifact(out, threads=1)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    assert runner(x).shape == (2, 10)
    with pytest.raises(EdgekitError, match="already exists"):
        run_qat(qat_ws, build_context(qat_ws, ds), ds.test, cfg)


@pytest.mark.parametrize(
    "kw",
    [{"epochs": 0}, {"epochs": 101}, {"steps": 0}, {"lr": 0}, {"lr": float("nan")}, {"batch": 0}],
)
def test_qat_settings_out_of_range(kw):
    from edgekit.qat import QatConfig

    with pytest.raises(EdgekitError, match="out of range"):
        QatConfig(**kw).check()


def test_cli_qat_bad_input_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "edgekit", "qat", "-w", str(tmp_path), "--epochs", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "--epochs" in r.stderr and "Traceback" not in r.stderr
