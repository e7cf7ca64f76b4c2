"""OpenVINO backend: ov-cpu / ov-cpu-int8 build, load and bench; refusals; unavailability."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from tests.test_cpu_targets import fp32_logits, write_target


def _need_openvino():
    from edgekit.backends.base import is_installed

    if not (is_installed("openvino") and is_installed("nncf")):
        pytest.skip("openvino/nncf not installed (uv sync --extra openvino)")


@pytest.fixture(scope="module")
def tiny_ds(tiny_npz):
    from edgekit.data import load_dataset

    return load_dataset(f"npz:{tiny_npz}")


@pytest.fixture(scope="module")
def ov_artifacts(tiny_workspace, tmp_path_factory):
    """ov-cpu and ov-cpu-int8 (4 calibration images per class) built once for the module."""
    _need_openvino()
    from edgekit.pipeline import build

    tmp = tmp_path_factory.mktemp("ovt")
    fp32 = build(tiny_workspace, "ov-cpu", [write_target(tmp, "ov-cpu")], force=True)
    int8 = build(
        tiny_workspace,
        "ov-cpu-int8",
        [write_target(tmp, "ov-cpu-int8", calib_per_class=4)],
        force=True,
    )
    return {"ov-cpu": fp32, "ov-cpu-int8": int8}


@pytest.mark.parametrize("name", ["ov-cpu", "ov-cpu-int8"])
def test_ov_target_builds_loads_and_benches(tiny_workspace, tiny_ds, ov_artifacts, name):
    from edgekit.build import open_artifact
    from edgekit.harness import BenchConfig, bench_artifact
    from edgekit.manifest import read_manifest
    from edgekit.preprocess import Preprocess

    art = tiny_workspace.artifact_dir(name)
    m = read_manifest(art)  # schema-validated, hashes checked
    assert m["backend"] == "openvino" and m["artifact"] == "model.xml"
    assert set(m["files"]) == {"model.xml", "model.bin"}
    assert m["size_bytes"] == sum(f["bytes"] for f in m["files"].values())
    if name == "ov-cpu-int8":
        assert m["calibration"]["images"] == 40 and m["calibration"]["split"] == "train"
        q = m["quantization"]
        assert q["tool"] == "nncf.quantize" and q["preset"] == "performance"
        # the defaults chosen by benchmarks/ov_defaults.py reach the manifest
        assert q["activation_range"] == "minmax" and m["calibration"]["order"] == "interleaved"
        assert isinstance(q["fp32_nodes"], list)
        assert b'type="FakeQuantize"' in (art / "model.xml").read_bytes()
    runner, man = open_artifact(art, threads=1)
    try:
        x = Preprocess.from_dict(man["preprocess"]).apply(tiny_ds.test.x[:8])
        got, ref = runner(x), fp32_logits(tiny_workspace, x)
        assert got.shape == (8, 10) and got.dtype == np.float32
        err = np.abs(got - ref).max() / (np.abs(ref).max() + 1e-6)
        corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
        # FP32 matches eager; INT8 of this barely trained net tracks it. Over 8 training
        # seeds NNCF's INT8 gave a relative max error of 0.20-0.50 and a correlation of
        # 0.93-0.996 with eager FP32; a broken quantization gives a correlation near 0.
        assert err < 1e-4 if name == "ov-cpu" else (err < 1.0 and corr > 0.85), (err, corr)
        # batch 1 after batch 8: the IR keeps the export's dynamic batch
        assert np.allclose(runner(x[:1]), got[:1], atol=1e-4 * (np.abs(got).max() + 1))
    finally:
        runner.close()
    row = bench_artifact(art, tiny_ds.test, BenchConfig.quick(), threads=1)
    assert row["status"] == "ok" and row["top1"] is not None, row
    assert row["latency_ms"]["p50"] > 0


def test_threads_and_hints_reach_the_plugin():
    from edgekit.backends.openvino import compile_config

    opts = {"performance_hint": "THROUGHPUT", "num_streams": 0, "inference_num_threads": 3}
    assert compile_config({**opts, "inference_precision": "f32"}, None) == {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_NUM_THREADS": 3,
        "INFERENCE_PRECISION_HINT": "f32",
    }
    # --threads wins over the option; "default" leaves the precision to OpenVINO
    cfg = compile_config({**opts, "num_streams": 2, "inference_precision": "default"}, 1)
    assert cfg == {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 1}
    assert compile_config({"cpu_pinning": "off"}, None)["ENABLE_CPU_PINNING"] is False
    assert "ENABLE_CPU_PINNING" not in compile_config({"cpu_pinning": "default"}, None)


def _copy(art, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(art, d)
    return d, json.loads((d / "manifest.json").read_text())


def _rehash(d, m):
    from edgekit.manifest import file_record

    for name in m["files"]:
        m["files"][name] = file_record(d / name)
    (d / "manifest.json").write_text(json.dumps(m))


def test_ir_from_newer_openvino_is_refused(tiny_workspace, ov_artifacts, tmp_path):
    from edgekit.build import open_artifact

    d, m = _copy(tiny_workspace.artifact_dir("ov-cpu"), tmp_path)
    xml = (d / "model.xml").read_text()
    assert "<Runtime_version" in xml, "OpenVINO stopped recording Runtime_version in the IR"
    import re

    xml = re.sub(r'<Runtime_version value="[^"]*"', '<Runtime_version value="2999.1.0-1"', xml)
    (d / "model.xml").write_text(xml)
    _rehash(d, m)
    with pytest.raises(EdgekitError, match=r"newer than the installed .*") as e:
        open_artifact(d, threads=1)
    assert "OpenVINO 2999.1.0" in e.value.message and "openvino>=2999.1" in e.value.hint
    # the manifest's record alone is enough too
    d2, m2 = _copy(tiny_workspace.artifact_dir("ov-cpu"), tmp_path / "b")
    m2["versions"]["openvino"] = "2999.0.0"
    (d2 / "manifest.json").write_text(json.dumps(m2))
    with pytest.raises(EdgekitError, match="manifest says it was built with OpenVINO 2999.0.0"):
        open_artifact(d2, threads=1)


def test_corrupted_ir_is_refused_with_the_reason(tiny_workspace, ov_artifacts, tmp_path):
    from edgekit.build import open_artifact

    d, m = _copy(tiny_workspace.artifact_dir("ov-cpu"), tmp_path)
    xml = (d / "model.xml").read_bytes()
    (d / "model.xml").write_bytes(xml[: len(xml) // 2])  # truncated XML
    with pytest.raises(EdgekitError, match="sha256|size"):  # the manifest's hash catches it
        open_artifact(d, threads=1)
    _rehash(d, m)  # a manifest written over a broken IR: OpenVINO's parser refuses it
    with pytest.raises(EdgekitError, match="OpenVINO cannot load .*model.xml"):
        open_artifact(d, threads=1)


def test_fp32_ir_relabelled_int8_is_refused(tiny_workspace, ov_artifacts, tmp_path):
    from edgekit.manifest import read_manifest

    d, m = _copy(tiny_workspace.artifact_dir("ov-cpu"), tmp_path)
    m["precision"], m["target"] = "int8", "ov-cpu-int8"
    m["options"] = {**m["options"], "preset": "performance", "calib_per_class": 4}
    m["options"].update(fast_bias_correction=True, overflow_fix="first_layer_only")
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgekitError, match="no FakeQuantize node"):
        read_manifest(d)


def test_unavailable_with_install_command_when_missing(monkeypatch):
    from edgekit.backends import base
    from edgekit.targets import get_target, unavailable_reason

    real = base.is_installed
    monkeypatch.setattr(base, "is_installed", lambda n: n not in ("openvino", "nncf") and real(n))
    for name in ("ov-cpu", "ov-cpu-int8"):
        reason = unavailable_reason(get_target(name))
        assert reason and "openvino" in reason, reason
        assert "pip install 'edgekit-toolchain[openvino]'" in reason
    # openvino present, nncf missing: the INT8 target names nncf; FP32 stays available
    monkeypatch.setattr(
        base, "is_installed", lambda n: n == "openvino" or (n != "nncf" and real(n))
    )
    assert "nncf" in unavailable_reason(get_target("ov-cpu-int8"))
    if real("openvino"):
        assert unavailable_reason(get_target("ov-cpu")) is None


def test_unavailable_target_is_a_row_not_a_crash(tiny_workspace, monkeypatch):
    from edgekit.backends import base
    from edgekit.errors import UnavailableError
    from edgekit.pipeline import build

    real = base.is_installed
    monkeypatch.setattr(base, "is_installed", lambda n: n != "openvino" and real(n))
    with pytest.raises(UnavailableError, match=r"ov-cpu is unavailable here: openvino not"):
        build(tiny_workspace, "ov-cpu", force=True)


def test_runner_imports_no_torch(tiny_workspace, ov_artifacts):
    """The device install has no torch: loading and running an IR must not import it."""
    import subprocess
    import sys

    art = tiny_workspace.artifact_dir("ov-cpu-int8")
    code = (
        "import sys, numpy as np\n"
        "from edgekit.build import open_artifact\n"
        f"r, m = open_artifact({str(art)!r}, threads=1)\n"
        "s = m['io']['input_shape']\n"
        "y = r(np.zeros((1, 3, s[2], s[3]), np.float32))\n"
        "assert y.shape == (1, 10)\n"
        "bad = [k for k in ('torch', 'nncf', 'onnx') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_interleave_classes_balances_every_prefix():
    from edgekit.backends.openvino import interleave_classes

    y = np.repeat(np.arange(10), 32)  # edgekit's calibration order: grouped by class
    order = interleave_classes(y)
    assert sorted(order.tolist()) == list(range(len(y)))  # a permutation
    z = y[order]
    for n in (10, 64, 100, 320):  # 64 = what NNCF's full bias correction reads of 320
        counts = np.bincount(z[:n], minlength=10)
        assert counts.max() - counts.min() <= 1, (n, counts)
    for c in range(10):  # within a class the original order is kept
        assert (np.diff(order[z == c]) > 0).all()
    uneven = np.array([0, 0, 0, 1, 2, 2])
    assert uneven[interleave_classes(uneven)].tolist() == [0, 1, 2, 0, 2, 0]


@pytest.mark.parametrize("order,ranges", [("interleaved", "minmax"), ("by_class", "mean_minmax")])
def test_options_and_image_order_reach_nncf(
    tiny_workspace, tiny_ds, tmp_path, monkeypatch, order, ranges
):
    """preset, calib_per_class, calib_order and activation_range reach nncf.quantize;
    the manifest says so."""
    _need_openvino()
    import nncf

    from edgekit.backends.openvino import interleave_classes
    from edgekit.build import build_target
    from edgekit.manifest import read_manifest
    from edgekit.pipeline import build_context
    from edgekit.targets import get_target

    seen = {}
    real = nncf.quantize

    def spy(model, dataset, **kw):
        seen.update(kw, x=np.concatenate(list(dataset.get_inference_data())))
        return real(model, dataset, **kw)

    monkeypatch.setattr(nncf, "quantize", spy)
    base = get_target("ov-cpu-int8")
    opts = {**base.options, "preset": "mixed", "calib_per_class": 3, "calib_order": order}
    opts["activation_range"] = ranges
    t = dataclasses.replace(base, options=opts)
    ctx = build_context(tiny_workspace, tiny_ds)
    build_target(t, ctx, tmp_path / "a", force=True)
    x, y, _ = ctx.calibration_set(3)
    assert seen["preset"] == nncf.QuantizationPreset.MIXED and seen["subset_size"] == 30
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    got = seen["advanced_parameters"].activations_range_estimator_params
    want_ranges = (
        RangeEstimatorParametersSet.MINMAX  # global min/max over the calibration images
        if ranges == "minmax"
        else AdvancedQuantizationParameters().activations_range_estimator_params  # NNCF's
    )
    assert got == want_ranges
    want = x[interleave_classes(y)] if order == "interleaved" else x
    assert np.array_equal(seen["x"], want)
    if order == "interleaved":
        assert not np.array_equal(seen["x"], x)  # the set is class-grouped before
    m = read_manifest(tmp_path / "a")
    assert m["options"]["calib_order"] == order and m["calibration"]["order"] == order
    assert m["quantization"]["bias_correction_images"] == 6  # NNCF's full one: 20% of 30
    assert m["options"]["activation_range"] == m["quantization"]["activation_range"] == ranges
