"""Issue 18: INT8 that holds on every x86 CPU (saturation emulator, ISA record, auto calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.errors import EdgekitError


def _conv_qdq(tmp_path, reduce_range=False, qoperator=False):
    """A 1x1 Conv (2 -> 16 channels, every weight 1.0) quantized U8S8 by ONNX Runtime.

    Calibrated on inputs in [0, 1]: the input scale is 1/255 with zero point 0, so an
    input of 1.0 is the byte 255; the weights quantize to 127 (64 with reduce_range).
    One output is then 255*127 + 255*127 = 64,770 in int32 with VNNI, and the int16
    maximum 32,767 through ``vpmaddubsw`` without it.
    """
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    w = np.ones((16, 2, 1, 1), np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16, 4, 4])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    fp32 = tmp_path / "fp32.onnx"
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what this onnxruntime reads
    onnx.save(model, fp32)
    rng = np.random.default_rng(0)
    calib = [rng.uniform(0, 1, (4, 2, 4, 4)).astype(np.float32) for _ in range(4)]
    calib[0][0] = 1.0  # the range is [0, 1] exactly
    calib[1][0] = 0.0

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"x": x}

    out = tmp_path / f"{'rr' if reduce_range else 'q'}{'-qop' if qoperator else ''}.onnx"
    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
    )
    return out


def test_risky_pairs_mask_and_k_order():
    from edgekit.saturation import risky_pairs_mask, weight_k_matrix

    wk = np.array([[127, 127, 127, -127, 64, 64, 100, 29, 100, 28]])
    # same sign and |w0| + |w1| >= 129 only
    assert risky_pairs_mask(wk).tolist() == [[True, False, False, True, False]]
    # a conv filter [M=1, C=2, kh=1, kw=2]: MLAS pairs the two channels of one tap
    w = np.array([[[[1, 2]], [[3, 4]]]])
    assert weight_k_matrix(w, "hwc").tolist() == [[1, 3, 2, 4]]
    assert weight_k_matrix(w, "chw").tolist() == [[1, 2, 3, 4]]
    # an odd channel count: padded per tap with hwc_pad, once at the end otherwise
    w3 = np.arange(1, 4).reshape(1, 3, 1, 1)
    assert weight_k_matrix(w3, "hwc").tolist() == [[1, 2, 3, 0]]
    assert weight_k_matrix(np.arange(1, 7).reshape(1, 3, 1, 2), "hwc_pad").tolist() == [
        [1, 3, 5, 0, 2, 4, 6, 0]
    ]


def test_emulator_saturates_like_vpmaddubsw_and_reduce_range_cannot(tmp_path):
    import onnxruntime as ort

    from edgekit.harness import cpu_flags
    from edgekit.isa import host_is_x86
    from edgekit.saturation import QdqEmulator, risky_weight_pairs

    q = _conv_qdq(tmp_path)
    x = np.ones((1, 2, 4, 4), np.float32)
    exact = QdqEmulator(q, saturate=False)(x)
    sat_em = QdqEmulator(q, saturate=True)
    sat = sat_em(x)
    assert np.allclose(exact, 2.0, atol=0.02)  # 64,770 / 255 / 127 * 1.0
    assert np.allclose(sat, 32767 / 255 / 127, atol=0.02)  # the int16 maximum
    assert sat_em.stats["Conv#0"]["saturated"] == 16 * 16  # every output pair sum
    assert risky_weight_pairs(q)["risky"] == 16
    # half the input: 127*127*2 = 32,258 fits int16, so nothing saturates
    assert np.allclose(sat_em(x * 0.5), exact * 0.5, atol=0.02)
    # ONNX Runtime on this CPU matches the emulator of its kind
    s = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    y = s.run(None, {"x": x})[0]
    vnni = cpu_flags()["isa"]["vnni"] or not host_is_x86()
    assert np.allclose(y, exact if vnni else sat, atol=0.02)

    # the QOperator form (QLinearConv) is counted too
    assert risky_weight_pairs(_conv_qdq(tmp_path, qoperator=True))["risky"] == 16
    rr = _conv_qdq(tmp_path, reduce_range=True)
    assert risky_weight_pairs(rr)["risky"] == 0
    assert np.allclose(QdqEmulator(rr, saturate=True)(x), 2.0, atol=0.05)


QEMU = "qemu-x86_64-static"


def test_on_an_emulated_avx2_cpu_onnxruntime_saturates_and_edgekit_says_so(tmp_path):
    """ONNX Runtime's own AVX2 kernels, on a CPU without VNNI: QEMU's user-mode emulator
    answers CPUID as an AMD EPYC (Zen 1: AVX2, no AVX-512, no VNNI), so MLAS dispatches
    its ``vpmaddubsw`` kernel and QEMU executes it. The output is the saturating
    emulator's, and edgekit's ISA check (CPUID, not the host's /proc/cpuinfo) sees no VNNI,
    so the runner's warning fires for a full-range artifact."""
    import json
    import shutil
    import subprocess
    import sys

    from edgekit.saturation import QdqEmulator

    if sys.platform != "linux" or shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (Debian: apt install qemu-user-static)")
    q = _conv_qdq(tmp_path)
    x = np.ones((1, 2, 4, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        "from edgekit.harness import cpu_flags\n"
        "from edgekit.backends.onnxruntime import warn_isa\n"
        "from edgekit.isa import isa_record\n"
        "d = sys.argv[1]\n"
        "s = ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])\n"
        "np.save(d + '/y.npy', s.run(None, {'x': np.load(d + '/x.npy')})[0])\n"
        "m = {'target': 'ort-cpu-int8', 'isa': isa_record("
        "{'activation_type': 'QUInt8', 'weight_type': 'QInt8'}, 16)}\n"
        "print(json.dumps({'isa': cpu_flags()['isa'], 'warns': bool(warn_isa(m))}))\n"
    )
    res = subprocess.run(
        [QEMU, "-cpu", "EPYC", sys.executable, "-c", code, str(tmp_path), str(q)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["isa"]["avx2"] and not got["isa"]["avx512"] and not got["isa"]["vnni"]
    assert got["warns"]
    y = np.load(tmp_path / "y.npy")
    sat = QdqEmulator(q, saturate=True)(x)
    exact = QdqEmulator(q, saturate=False)(x)
    assert np.allclose(y, sat, atol=0.02) and not np.allclose(y, exact, atol=0.5)


def test_isa_record_and_problem():
    from edgekit.isa import artifact_safety, isa_problem, isa_record

    u8s8 = {"activation_type": "QUInt8", "weight_type": "QInt8"}
    risky = isa_record(u8s8, 12)
    assert risky["requires"] == "vnni" and risky["saturation_safe"] is False
    safe = isa_record(u8s8, 0)
    assert safe["requires"] is None and safe["saturation_safe"] is True
    s8s8 = isa_record({"activation_type": "QInt8", "weight_type": "QInt8"}, 5)
    assert s8s8["kernel"] == "S8S8" and s8s8["saturation_safe"] is None

    m = {"target": "ort-cpu-int8", "precision": "int8", "isa": risky}
    avx2 = {"avx2": True, "vnni": False}
    msg = isa_problem(m, avx2, x86=True)
    assert "VNNI" in msg and "12" in msg and "reduce_range = true" in msg
    assert isa_problem(m, {"avx2": True, "vnni": True}, x86=True) is None
    assert isa_problem(m, {"neon": True}, x86=False) is None  # ARM: another kernel
    assert isa_problem({**m, "isa": safe}, avx2, x86=True) is None

    rows = artifact_safety(
        [
            ("a", m),
            ("b", {**m, "isa": safe, "quantization": {"fp32_nodes": ["node_mean"]}}),
            ("c", {"target": "t", "precision": "int8"}),
            ("d", {"target": "ort-cpu", "precision": "fp32"}),
        ],
        avx2,
    )
    got = {r["artifact"]: r for r in rows}
    assert set(got) == {"a", "b", "c"}  # FP32 artifacts are not listed
    assert got["b"]["safe_here"] is True and got["b"]["fp32_nodes"] == ["node_mean"]
    assert got["c"]["safe_here"] is None and "no ISA record" in got["c"]["reason"]
    expected_a = not isa_problem(m, avx2)  # host-dependent: x86 or not
    assert got["a"]["safe_here"] is expected_a


def test_runner_warns_on_cpu_without_vnni(monkeypatch, capsys):
    import edgekit.harness
    import edgekit.isa
    from edgekit.backends.onnxruntime import warn_isa
    from edgekit.isa import isa_record

    m = {
        "target": "ort-cpu-int8",
        "isa": isa_record({"activation_type": "QUInt8", "weight_type": "QInt8"}, 3),
    }
    monkeypatch.setattr(edgekit.isa, "host_is_x86", lambda: True)
    monkeypatch.setattr(
        edgekit.harness, "cpu_flags", lambda: {"cpu": "x", "isa": {"avx2": True, "vnni": False}}
    )
    assert warn_isa(m)
    assert "warning:" in capsys.readouterr().err
    monkeypatch.setattr(
        edgekit.harness, "cpu_flags", lambda: {"cpu": "x", "isa": {"avx2": True, "vnni": True}}
    )
    assert warn_isa(m) is None and capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def auto_workspace(tmp_path_factory):
    """ResNet-8, untrained, on a synthetic 10-class set with 24 training images per class."""
    from edgekit.pipeline import ModelSpec, prepare

    d = tmp_path_factory.mktemp("auto-data")
    rng = np.random.default_rng(1)
    for split, per in (("train", 24), ("test", 2)):
        y = np.repeat(np.arange(10), per)
        base = (y[:, None, None, None] * 25).astype(np.int16)
        x = np.clip(base + rng.integers(-30, 30, (len(y), 32, 32, 3)), 0, 255).astype(np.uint8)
        np.savez(d / f"auto-{split}.npz", x=x, y=y)
    spec = ModelSpec(dataset=f"npz:{d}", model="resnet8", epochs=1, exporter="torchscript")
    return prepare(spec, tmp_path_factory.mktemp("autows"), log=lambda *_: None)


def _target_file(tmp_path, **opts):
    lines = ['name = "ort-cpu-int8"', 'backend = "onnxruntime"', 'precision = "int8"', "[options]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in opts.items()]
    f = tmp_path / "ort-cpu-int8.toml"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_auto_calibration_records_choice_and_slice(auto_workspace, tmp_path):
    from edgekit.manifest import read_manifest
    from edgekit.pipeline import build

    f = _target_file(tmp_path, calibration_method="auto", calib_per_class=4, auto_images=100)
    build(auto_workspace, "ort-cpu-int8", [f], force=True)
    m = read_manifest(auto_workspace.artifact_dir("ort-cpu-int8"))
    auto = m["calibration"]["auto"]
    assert set(auto["candidates"]) == {"minmax", "percentile", "entropy"}
    drops = {k: v["drop"] for k, v in auto["candidates"].items()}
    assert auto["chosen"] == min(drops, key=drops.get)
    assert m["calibration"]["method"] == auto["chosen"]
    for v in auto["candidates"].values():
        assert v["drop"] == pytest.approx(auto["fp32_top1"] - v["top1"], abs=1e-3)
    assert auto["slice"]["images"] == 100 and auto["slice"]["split"] == "train"
    assert m["isa"]["kernel"] == "U8S8" and "fp32_nodes" in m["quantization"]

    # edgekit doctor --artifacts lists it, with whether it is safe on this CPU
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit",
            "doctor",
            "--json",
            "--artifacts",
            str(auto_workspace.root),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    import jsonschema

    from tests.test_doctor import SCHEMA

    rep = json.loads(r.stdout)
    jsonschema.validate(rep, SCHEMA)
    rows = rep["int8_artifacts"]
    assert [row["target"] for row in rows] == ["ort-cpu-int8"]
    assert rows[0]["safe_here"] in (True, False)


def test_auto_calibration_slice_too_small(auto_workspace, tmp_path):
    from edgekit.pipeline import build

    f = _target_file(tmp_path, calibration_method="auto", calib_per_class=4, auto_images=50)
    with pytest.raises(EdgekitError, match=r"at least 100 images \(10 per class"):
        build(auto_workspace, "ort-cpu-int8", [f], force=True)
    # 24 per class, 4 used to calibrate: 20 left, 30 asked
    f = _target_file(tmp_path, calibration_method="auto", calib_per_class=4, auto_images=300)
    with pytest.raises(EdgekitError, match=r"300 held-out training images \(30 per class\)"):
        build(auto_workspace, "ort-cpu-int8", [f], force=True)


def test_new_options_reach_the_quantizer(tiny_workspace, tmp_path):
    """activation_symmetric puts every uint8 activation zero point at 128; the default
    (asymmetric, reduce_range) records a saturation-safe ISA; pre_process_optimize = false
    still builds."""
    import onnx
    from onnx import numpy_helper

    from edgekit.manifest import read_manifest
    from edgekit.pipeline import build

    def zero_points(ws):
        m = onnx.load(str(ws.artifact_dir("ort-cpu-int8") / "model.onnx"))
        init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        return {
            int(init[n.input[2]])
            for n in m.graph.node
            if n.op_type == "QuantizeLinear" and init[n.input[2]].dtype == np.uint8
        }

    f = _target_file(tmp_path, calib_per_class=4, activation_symmetric=True)
    build(tiny_workspace, "ort-cpu-int8", [f], force=True)
    assert zero_points(tiny_workspace) == {128}

    f = _target_file(tmp_path, calib_per_class=4, pre_process_optimize=False)
    build(tiny_workspace, "ort-cpu-int8", [f], force=True)
    m = read_manifest(tiny_workspace.artifact_dir("ort-cpu-int8"))
    assert m["options"]["reduce_range"] is True  # the default since issue 18
    assert m["isa"] == {
        **m["isa"],
        "requires": None,
        "saturation_safe": True,
        "risky_weight_pairs": 0,
    }
    assert zero_points(tiny_workspace) != {128}
