"""TensorRT targets on a machine without TensorRT: version dispatch, engine
compatibility, profile checks, unavailability, and the ONNX graphs fed to TensorRT
(Q/DQ INT8 and FP16) run in ONNX Runtime on the CPU. The engine build itself is
NOT run anywhere in these tests (no TensorRT here)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgekit.backends.base import is_installed  # noqa: E402
from edgekit.backends.gpu import check_batch_in_range
from edgekit.backends.tensorrt import engine_mismatch, plan_build, profile_shapes, trt_major
from edgekit.errors import EdgekitError

HAS_TRT = is_installed("tensorrt")  # not the tensorrt-stubs' folder of .pyi files
INT8 = {"int8_mode": "qdq"}


@pytest.mark.parametrize(
    "version,precision,opts,onnx,typed,flags,calib",
    [
        ("11.0.0.7", "int8", {"int8_mode": "qdq"}, "qdq", True, [], False),
        ("11.4.1", "fp16", {"fp16_mode": "onnx"}, "fp16", True, [], False),
        ("11.4.1", "fp32", {}, "fp32", True, [], False),
        ("10.3.0.26", "int8", {"int8_mode": "qdq"}, "qdq", True, [], False),
        ("10.3.0.26", "int8", {"int8_mode": "implicit"}, "fp32", False, ["INT8"], True),
        ("10.3.0.26", "fp16", {"fp16_mode": "flag"}, "fp32", False, ["FP16"], False),
        ("10.13.3", "fp16", {"fp16_mode": "onnx"}, "fp16", True, [], False),
    ],
)
def test_version_dispatch(version, precision, opts, onnx, typed, flags, calib):
    p = plan_build(version, precision, opts)
    assert (p.onnx, p.strongly_typed, p.flags, p.calibrator) == (onnx, typed, flags, calib)
    assert p.major == int(version.split(".")[0])


def test_version_dispatch_refuses_removed_apis_on_11():
    with pytest.raises(EdgekitError, match="removed the INT8 calibrators"):
        plan_build("11.0.0", "int8", {"int8_mode": "implicit"})
    with pytest.raises(EdgekitError, match="removed BuilderFlag.FP16"):
        plan_build("11.1.0", "fp16", {"fp16_mode": "flag"})
    with pytest.raises(EdgekitError, match="not supported"):
        trt_major("8.6.1")
    with pytest.raises(EdgekitError, match="int8_mode"):
        plan_build("10.3.0", "int8", {"int8_mode": "maybe"})


def test_profile_shapes():
    assert profile_shapes({"min_batch": 1, "opt_batch": 8, "max_batch": 64}, (3, 32, 32)) == {
        "min": [1, 3, 32, 32],
        "opt": [8, 3, 32, 32],
        "max": [64, 3, 32, 32],
    }
    with pytest.raises(EdgekitError, match="min_batch <= opt_batch"):
        profile_shapes({"min_batch": 4, "opt_batch": 2, "max_batch": 64}, (3, 32, 32))


def test_batch_outside_profile_is_refused():
    check_batch_in_range(8, (1, 128))
    with pytest.raises(EdgekitError, match="outside the engine's profile \\(batch 1..128\\)"):
        check_batch_in_range(129, (1, 128))
    with pytest.raises(EdgekitError, match="outside"):
        check_batch_in_range(1, (4, 16))


ENV = {
    "tensorrt": "10.3.0",
    "cuda_runtime": "12.6",
    "cuda_driver": "12.6",
    "gpu": "Orin",
    "compute_capability": "8.7",
}


def test_engine_mismatch():
    assert engine_mismatch(ENV, dict(ENV)) is None
    assert engine_mismatch(ENV, {**ENV, "cuda_driver": "12.8"}) is None  # newer driver is fine
    assert "TensorRT 10.3.0 at build time, 11.0.0 here" in engine_mismatch(
        ENV, {**ENV, "tensorrt": "11.0.0"}
    )
    assert "compute capability" in engine_mismatch(
        ENV, {**ENV, "compute_capability": "9.0", "gpu": "H100"}
    )
    assert "older 12.2" in engine_mismatch(ENV, {**ENV, "cuda_driver": "12.2"})


def test_loading_an_engine_from_another_setup_is_refused(monkeypatch, tmp_path):
    """The check runs before TensorRT touches the engine (fake tensorrt module)."""
    import edgekit.backends.gpu as gpu
    from edgekit.backends.tensorrt import BACKEND

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.0.0"))
    monkeypatch.setattr(
        gpu, "gpu_info", lambda: {**ENV, "gpu": "H100", "compute_capability": "9.0"}
    )
    manifest = {"target": "trt-int8", "artifact": "model.engine", "tensorrt": {"env": {**ENV}}}
    with pytest.raises(
        EdgekitError,
        match="another setup.*rebuild it here: edgekit build --target trt-int8 --force",
    ):
        BACKEND.load(tmp_path, manifest, None)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_targets_are_listed_unavailable_with_reasons():
    from edgekit.targets import load_targets, unavailable_reason

    t = load_targets()
    for name in ("trt-fp16", "trt-int8", "trt-fp32"):
        assert unavailable_reason(t[name]).startswith("TensorRT not installed")
    assert "CUDA" in unavailable_reason(t["ort-cuda"])


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_cli_build_without_tensorrt_is_one_line(tiny_workspace):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit",
            "build",
            "--target",
            "trt-int8",
            "-w",
            str(tiny_workspace.root),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: target trt-int8 is unavailable here: TensorRT not installed"
    )


def _qdq_facts(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    zps = [init[n.input[2]] for n in q + dq if len(n.input) > 2 and n.input[2] in init]
    conv_w_dq = []
    for n in m.graph.node:
        if n.op_type == "Conv":
            src = next(d for d in dq if d.output[0] == n.input[1])
            conv_w_dq.append((init[src.input[0]], init[src.input[1]]))
    return {"q": q, "dq": dq, "zps": zps, "conv_w": conv_w_dq}


SMALL_INT8 = """name = "trt-int8-small"
backend = "tensorrt"
precision = "int8"
[options]
calibration_per_class = 4
calibration_batch = 8
"""


def test_onnx_only_writes_qdq_for_tensorrt(tiny_workspace, tmp_path):
    from edgekit.pipeline import build

    tf = tmp_path / "t.toml"
    tf.write_text(SMALL_INT8)
    rec = build(tiny_workspace, "trt-int8-small", [tf], onnx_only=True, force=True)
    path = Path(rec["path"])
    assert path.is_file() and (path.parent / "tensorrt-build.json").is_file()
    f = _qdq_facts(path)
    assert f["q"] and f["dq"]
    # symmetric INT8 (int32 for biases), zero point 0 everywhere
    assert f["zps"] and all(z.dtype in (np.int8, np.int32) and not z.any() for z in f["zps"])
    assert any(z.dtype == np.int8 for z in f["zps"])
    for w, scale in f["conv_w"]:
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],)  # per-channel weights
    for n in f["q"]:
        assert n.input[1]  # activation scales are per-tensor scalars
    assert rec["calibration"]["sampler"] == "class-balanced"
    assert rec["calibration"]["cache_hit"] is False
    # unchanged model and calibration set: the cache is reused
    rec2 = build(tiny_workspace, "trt-int8-small", [tf], onnx_only=True, force=True)
    assert rec2["calibration"]["cache_hit"] is True
    assert rec2["calibration"]["cache_key"] == rec["calibration"]["cache_key"]
    # it runs in ONNX Runtime on the CPU
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = s.run(None, {s.get_inputs()[0].name: np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert out.shape == (2, 10) and np.isfinite(out).all()
    with pytest.raises(EdgekitError, match="exists"):
        build(tiny_workspace, "trt-int8-small", [tf], onnx_only=True)


def test_onnx_only_fp16_keeps_fp32_io(tiny_workspace):
    import onnx

    from edgekit.pipeline import build

    rec = build(tiny_workspace, "trt-fp16", onnx_only=True, force=True)
    m = onnx.load(rec["path"])
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)


def test_onnx_only_refuses_other_backends(tiny_workspace):
    from edgekit.pipeline import build

    with pytest.raises(EdgekitError, match="--onnx-only is for TensorRT targets"):
        build(tiny_workspace, "ort-cpu", onnx_only=True)


@pytest.mark.xfail(
    strict=True,
    reason="known defect: onnxconverter-common converts the FP32 initializer of a blocked "
    "node to FP16 (1e5 -> inf) and the output type to float16; the block list detects the "
    "node but the converter does not honour it for initializers yet",
)
def test_fp16_overflowing_nodes_stay_fp32(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgekit.qdq import make_fp16_onnx

    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [1e5])
    g = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "w"], ["big"], name="scale_up"),
            helper.make_node("Relu", ["big"], ["y"], name="relu"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), src)
    rec = make_fp16_onnx(src, tmp_path / "m16.onnx", np.ones((1, 4), np.float32))
    assert rec["fp32_nodes"] == ["relu", "scale_up"]
    import onnxruntime as ort

    s = ort.InferenceSession(str(tmp_path / "m16.onnx"), providers=["CPUExecutionProvider"])
    y = s.run(None, {"x": np.ones((1, 4), np.float32)})[0]
    assert np.isfinite(y).all() and y[0, 0] == pytest.approx(1e5)  # would be inf in FP16
