"""ONNX Runtime's GPU targets, checked on the CPU: ``ort-cuda`` (with ``cuda_graph``),
``ort-cuda-fp16`` and ``ort-trt``.

What runs here: the target list and the reasons they are unavailable without a GPU,
option validation, the provider options the GPU runner passes to ONNX Runtime (no
``device_id``: the cause of the spurious plugin-EP warning), and the FP16 graph, built
and run through the CPU execution provider. What does not: any CUDA or TensorRT
session (no GPU here); tests/test_gpu.py-style checks would need one.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgekit.backends import get_backend
from edgekit.backends.gpu import ort_provider_options
from edgekit.errors import EdgekitError
from edgekit.targets import load_target_file, load_targets, unavailable_reason

ORT = get_backend("onnxruntime")


def test_gpu_targets_are_listed_with_their_options():
    t = load_targets()
    assert t["ort-cuda"].options == {
        "execution_provider": "CUDAExecutionProvider",
        "cuda_graph": False,
    }
    assert t["ort-cuda-fp16"].precision == "fp16"
    assert t["ort-cuda-fp16"].options["execution_provider"] == "CUDAExecutionProvider"
    assert t["ort-trt"].options["execution_provider"] == "TensorrtExecutionProvider"
    for name in ("ort-cuda", "ort-cuda-fp16", "ort-trt"):
        assert t[name].requires == {"device": "cuda"}


def test_unavailable_here_with_the_reason(monkeypatch):
    import edgekit.calibration

    t = load_targets()
    monkeypatch.setattr(edgekit.calibration, "cuda_available", lambda: False)
    assert "needs a CUDA GPU and CuPy" in unavailable_reason(t["ort-cuda-fp16"])
    trt = unavailable_reason(t["ort-trt"])
    assert "a CUDA GPU and CuPy (none found)" in trt
    assert "TensorrtExecutionProvider (not in this onnxruntime)" in trt
    assert "TensorRT's libraries (libnvinfer not found)" in trt
    # with a GPU but this CPU-only onnxruntime: the execution provider is what is missing
    monkeypatch.setattr(edgekit.calibration, "cuda_available", lambda: True)
    assert "CUDAExecutionProvider not in this onnxruntime" in unavailable_reason(t["ort-cuda"])
    trt = unavailable_reason(t["ort-trt"])
    assert "CUDA GPU" not in trt and "TensorrtExecutionProvider" in trt


def test_ort_trt_available_where_tensorrt_and_the_ep_are(monkeypatch):
    import onnxruntime

    import edgekit.backends.onnxruntime as bo
    import edgekit.calibration

    monkeypatch.setattr(edgekit.calibration, "cuda_available", lambda: True)
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(bo, "tensorrt_libraries_found", lambda: False)
    t = load_targets()["ort-trt"]
    assert unavailable_reason(t).startswith("needs TensorRT's libraries (libnvinfer not found)")
    monkeypatch.setattr(bo, "tensorrt_libraries_found", lambda: True)
    assert unavailable_reason(t) is None


@pytest.mark.parametrize(
    ("options", "msg"),
    [
        ('cuda_graph = "yes"', "options.cuda_graph"),
        (
            'execution_provider = "CPUExecutionProvider"\ncuda_graph = true',
            "cuda_graph = true needs",
        ),
        (
            'execution_provider = "TensorrtExecutionProvider"\ncuda_graph = true',
            "not 'TensorrtExecutionProvider'",
        ),
        ("cuda_graf = true", "unknown option(s) cuda_graf"),
    ],
)
def test_bad_options_are_refused(tmp_path, options, msg):
    f = tmp_path / "t.toml"
    f.write_text(f'name = "x"\nbackend = "onnxruntime"\nprecision = "fp32"\n[options]\n{options}\n')
    with pytest.raises(EdgekitError) as e:
        load_target_file(f)
    assert msg in str(e.value)


def test_bad_option_is_one_error_line_from_the_cli(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(
        'name = "x"\nbackend = "onnxruntime"\nprecision = "fp16"\n'
        '[options]\nexecution_provider = "CPUExecutionProvider"\ncuda_graph = true\n'
    )
    p = subprocess.run(
        [sys.executable, "-m", "edgekit", "targets", "--target-file", str(f)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("error: ") and "cuda_graph = true needs" in lines[0]
    )


def test_cuda_graph_on_the_cuda_ep_is_accepted_and_absent_elsewhere():
    opts = ORT.resolve_options(
        "fp32", {"execution_provider": "CUDAExecutionProvider", "cuda_graph": True}
    )
    assert opts["cuda_graph"] is True
    # ort-cpu's resolved options (and so its manifest) are what they were before the
    # option existed: an older edgekit on a device can still open the artifact
    assert load_targets()["ort-cpu"].options == {"execution_provider": "CPUExecutionProvider"}
    assert "cuda_graph" not in load_targets()["ort-cpu-int8"].options


def test_provider_options_have_no_device_id():
    """``device_id`` is what makes ONNX Runtime >= 1.26 log the plugin-EP warning."""
    cuda = ort_provider_options("CUDAExecutionProvider", 1234)
    assert cuda == [("CUDAExecutionProvider", {"user_compute_stream": "1234"})]
    graph = ort_provider_options("CUDAExecutionProvider", 1234, cuda_graph=True)
    assert graph[0][1] == {"user_compute_stream": "1234", "enable_cuda_graph": "1"}
    trt = ort_provider_options("TensorrtExecutionProvider", 7)
    assert [name for name, _ in trt] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert all("device_id" not in o for _, o in [*cuda, *graph, *trt])
    with pytest.raises(EdgekitError):
        ort_provider_options("CPUExecutionProvider", 7)


def test_fp16_graph_built_and_run_on_cpu(tiny_workspace, tiny_npz, tmp_path):
    """ort-cuda-fp16's build (the FP16 ONNX), as a CPU-EP user target: it runs, FP32 I/O."""
    from edgekit.build import build_target, open_artifact
    from edgekit.pipeline import build_context

    f = tmp_path / "ort-cpu-fp16.toml"
    f.write_text(
        'name = "ort-cpu-fp16"\nbackend = "onnxruntime"\nprecision = "fp16"\n'
        '[options]\nexecution_provider = "CPUExecutionProvider"\n'
    )
    t16 = load_target_file(f)
    ctx = build_context(tiny_workspace)
    man = build_target(t16, ctx, tmp_path / "a16")
    assert man["quantization"]["fp16"]["tool"].startswith("onnxconverter_common.float16")
    m = onnx.load(str(tmp_path / "a16" / "model.onnx"))
    kinds = {onnx.TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer}
    assert "FLOAT16" in kinds and "FLOAT" not in kinds - {"INT64"}
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # the FP16 graph computes what the FP32 one does, to FP16 precision
    x = np.load(tiny_npz / "tiny-test.npz")["x"][:8]
    xin = ctx.preprocess.apply(x)
    r16, _ = open_artifact(tmp_path / "a16", threads=1)
    import onnxruntime as ort

    s32 = ort.InferenceSession(str(tiny_workspace.onnx), providers=["CPUExecutionProvider"])
    y32 = s32.run(None, {s32.get_inputs()[0].name: xin})[0]
    y16 = r16(xin)
    assert y16.dtype == np.float32 and y16.shape == y32.shape
    assert np.abs(y16 - y32).max() <= 2e-2 * max(1.0, float(np.abs(y32).max()))
    r16.close()


def test_artifact_from_a_newer_onnxruntime_names_both_versions(tmp_path):
    """A device whose onnxruntime is older than the build host's: refused, versions named."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgekit.backends.onnxruntime import OrtRunner

    g = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 99)])  # no runtime has it
    path = tmp_path / "model.onnx"
    onnx.save(m, str(path))
    manifest = {"io": {"input": "input"}, "versions": {"onnxruntime": "99.1.0"}}
    with pytest.raises(EdgekitError) as e:
        OrtRunner(path, manifest, 1)
    msg = str(e.value)
    assert f"ONNX Runtime {ort.__version__} cannot load" in msg
    assert "built with onnxruntime 99.1.0" in msg and "install onnxruntime>=99.1" in msg
    manifest["versions"] = {"onnxruntime": "1.0.0"}  # not newer: the plain message
    with pytest.raises(EdgekitError) as e:
        OrtRunner(path, manifest, 1)
    assert str(e.value).startswith(f"ONNX Runtime cannot load {path}: ")
