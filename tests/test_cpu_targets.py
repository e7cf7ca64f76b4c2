"""CPU lowering: ort-cpu-int8, ts-fp32, ts-fx-int8, calibration and target files."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import EdgekitError

REPO = Path(__file__).resolve().parents[1]


def toml_value(v) -> str:
    """A TOML literal for a bool, int, float, str or list of those (JSON spelling)."""
    import json

    return json.dumps(v)


def write_target(tmp_path: Path, base: str, **changes) -> Path:
    """A copy of targets/BASE.toml with ``key = value`` lines of [options] replaced."""
    text = (REPO / "targets" / f"{base}.toml").read_text()
    lines, section = [], ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip()
        key = line.split("=")[0].strip()
        if section == "[options]" and key in changes:
            v = changes.pop(key)
            line = f"{key} = {toml_value(v)}"
        lines.append(line)
    if changes:  # options not in the base file go at the end of [options]
        if "[options]" not in text:
            lines.append("[options]")
        lines += [f"{k} = {toml_value(v)}" for k, v in changes.items()]
    p = tmp_path / f"{base}.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


# --- calibration set ----------------------------------------------------------------


def test_calibration_set_is_class_balanced(tiny_workspace):
    from edgekit.pipeline import build_context

    ctx = build_context(tiny_workspace)
    x, y, rec = ctx.calibration_set(3)
    assert np.bincount(y, minlength=10).tolist() == [3] * 10
    assert x.shape == (30, 3, 32, 32) and x.dtype == np.float32
    assert rec == {
        "split": "train",
        "per_class": 3,
        "seed": 0,
        "images": 30,
        "sampler": "class-balanced",
    }
    # reproducible for a seed, different for another
    _, y2, _ = ctx.calibration_set(3)
    x2, _, _ = ctx.calibration_set(3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_calibration_set_smaller_than_asked(tiny_workspace):
    from edgekit.pipeline import build_context

    ctx = build_context(tiny_workspace)
    with pytest.raises(EdgekitError, match="fewer than the 9 per class"):
        ctx.calibration_set(9)  # tiny_npz has 8 training images per class


@pytest.mark.parametrize("base", ["ort-cpu-int8", "ts-fx-int8"])
def test_build_refuses_too_small_calibration_set(tiny_workspace, tmp_path, base):
    from edgekit.pipeline import build

    f = write_target(tmp_path, base, calib_per_class=32)
    with pytest.raises(EdgekitError) as e:
        build(tiny_workspace, base, [f], force=True)
    assert "calibration set smaller than asked" in str(e.value)
    assert "calib_per_class" in str(e.value)
    assert (
        not tiny_workspace.artifact_dir(base).exists()
        or (tiny_workspace.artifact_dir(base) / "manifest.json").is_file()
    )


# --- target files -------------------------------------------------------------------


def test_new_targets_are_listed_and_available():
    from edgekit.targets import load_targets, unavailable_reason

    t = load_targets()
    for name in ("ort-cpu-int8", "ts-fp32", "ts-fx-int8"):
        assert name in t
        assert unavailable_reason(t[name]) is None, name
    o = t["ort-cpu-int8"].options
    assert o["quant_format"] == "QDQ" and o["calib_per_class"] == 32
    assert (o["activation_type"], o["weight_type"]) == ("QUInt8", "QInt8")
    assert t["ort-cpu-int8"].notes.strip()  # the measured reasons for the defaults


def test_unknown_option_in_target_file(tmp_path):
    from edgekit.targets import load_target_file

    f = write_target(tmp_path, "ort-cpu-int8", calibration_mehtod="Entropy")
    with pytest.raises(EdgekitError, match="unknown option.*calibration_mehtod"):
        load_target_file(f)


def test_cli_unknown_option_exits_2(tmp_path):
    import subprocess
    import sys

    f = write_target(tmp_path, "ts-fx-int8", engien="x86")
    r = subprocess.run(
        [sys.executable, "-m", "edgekit", "targets", "--target-file", str(f)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "engien" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_bad_option_value(tiny_workspace, tmp_path):
    from edgekit.pipeline import build

    f = write_target(tmp_path, "ort-cpu-int8", calib_per_class=4, quant_format="QQQ")
    with pytest.raises(
        EdgekitError, match='options.quant_format must be one of "QDQ", "QOperator", got "QQQ"'
    ):
        build(tiny_workspace, "ort-cpu-int8", [f], force=True)


# --- each target builds and runs on a small model ------------------------------------


@pytest.fixture(scope="module")
def tiny_ds(tiny_npz):
    from edgekit.data import load_dataset

    return load_dataset(f"npz:{tiny_npz}")


def fp32_logits(ws, x):
    import torch

    from edgekit.models import load_model

    model, _ = load_model(None, ws.checkpoint, None)
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    "name,options",
    [
        ("ort-cpu-int8", {"calib_per_class": 4}),
        ("ort-cpu-int8", {"calib_per_class": 4, "quant_format": "QOperator", "per_channel": False}),
        ("ort-cpu-int8", {"calib_per_class": 2, "calibration_method": "percentile"}),
        ("ts-fp32", {}),
        ("ts-fx-int8", {"calib_per_class": 4}),
    ],
)
def test_target_builds_and_runs(tiny_workspace, tiny_ds, tmp_path, name, options):
    from edgekit.build import open_artifact
    from edgekit.harness import BenchConfig, bench_artifact
    from edgekit.pipeline import build
    from edgekit.preprocess import Preprocess

    f = write_target(tmp_path, name, **options)
    m = build(tiny_workspace, name, [f], force=True)
    art = tiny_workspace.artifact_dir(name)
    assert m["target"] == name and (art / m["artifact"]).is_file()
    assert m["options"] == {**m["options"], **options}
    if name != "ts-fp32":
        assert m["calibration"]["per_class"] == options["calib_per_class"]
        assert m["calibration"]["images"] == 10 * options["calib_per_class"]
        assert m["calibration"]["split"] == "train"
    else:
        assert m["artifact"].endswith(".ts.pt") and m["calibration"] is None

    runner, man = open_artifact(art, threads=1)
    try:
        pre = Preprocess.from_dict(man["preprocess"])
        x = pre.apply(tiny_ds.test.x[:8])
        got = runner(x)
        ref = fp32_logits(tiny_workspace, x)
        assert got.shape == (8, 10) and got.dtype == np.float32
        err = np.abs(got - ref).max() / (np.abs(ref).max() + 1e-6)
        # FP32 TorchScript matches eager; INT8 is close (tolerance of 8-bit quantization)
        assert err < (1e-4 if name == "ts-fp32" else 0.25), err
    finally:
        runner.close()
    row = bench_artifact(art, tiny_ds.test, BenchConfig.quick(), threads=1)
    assert row["status"] == "ok" and row["top1"] is not None
    assert row["latency_ms"]["p50"] > 0


def test_fx_int8_records_engine_and_arch(tiny_workspace, tmp_path):
    from edgekit.pipeline import build

    f = write_target(tmp_path, "ts-fx-int8", calib_per_class=2)
    m = build(tiny_workspace, "ts-fx-int8", [f], force=True)
    expected = "qnnpack" if platform.machine().lower().startswith(("arm", "aarch64")) else "x86"
    assert m["quantized_engine"] == expected
    assert m["build_arch"] == platform.machine()


def test_qnnpack_artifact_refused_on_x86(tiny_workspace, tmp_path):
    import torch

    from edgekit.build import open_artifact
    from edgekit.pipeline import build

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs an x86-64 machine to show an ARM artifact being refused")
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build lacks qnnpack, so no ARM artifact can be built here")
    f = write_target(tmp_path, "ts-fx-int8", calib_per_class=2, engine="qnnpack")
    m = build(tiny_workspace, "ts-fx-int8", [f], force=True)
    assert m["quantized_engine"] == "qnnpack"
    with pytest.raises(EdgekitError, match="qnnpack quantized engine.*this machine is x86_64"):
        open_artifact(tiny_workspace.artifact_dir("ts-fx-int8"))


def test_unknown_engine_is_an_error(tiny_workspace, tmp_path):
    from edgekit.pipeline import build

    f = write_target(tmp_path, "ts-fx-int8", calib_per_class=2, engine="tpu")
    with pytest.raises(EdgekitError, match='options.engine must be one of "auto", .*got "tpu"'):
        build(tiny_workspace, "ts-fx-int8", [f], force=True)


def test_fx_build_does_not_flood_deprecation_warnings(tiny_workspace, tmp_path, recwarn):
    from edgekit.pipeline import build

    f = write_target(tmp_path, "ts-fx-int8", calib_per_class=2)
    build(tiny_workspace, "ts-fx-int8", [f], force=True)
    noisy = [w for w in recwarn if "deprecat" in str(w.message).lower()]
    assert noisy == [], [str(w.message)[:80] for w in noisy]


# --- ops ONNX Runtime cannot quantize ------------------------------------------------


def test_unquantizable_op_explained_or_kept_fp32(tiny_workspace, tmp_path):
    """ResNet-8 has Add/GlobalAveragePool; restricting quantizable ops to Conv leaves
    them unquantizable: "error" explains, "fp32" keeps those nodes in FP32."""
    from edgekit.pipeline import build

    f = write_target(
        tmp_path,
        "ort-cpu-int8",
        calib_per_class=2,
        unsupported_ops="error",
        op_types_to_quantize=["Conv"],
    )
    with pytest.raises(EdgekitError, match="cannot quantize op type.*Add") as e:
        build(tiny_workspace, "ort-cpu-int8", [f], force=True)
    assert 'unsupported_ops = "fp32"' in str(e.value)

    f.write_text(f.read_text().replace('unsupported_ops = "error"', 'unsupported_ops = "fp32"'))
    m = build(tiny_workspace, "ort-cpu-int8", [f], force=True)
    assert "Add" in m["quantization"]["fp32_op_types"]
    assert m["quantization"]["fp32_nodes"]


def test_nodes_to_exclude_must_exist(tiny_workspace, tmp_path):
    from edgekit.pipeline import build

    f = write_target(tmp_path, "ort-cpu-int8", calib_per_class=2, nodes_to_exclude=["nope"])
    with pytest.raises(EdgekitError, match="nodes_to_exclude names node.*nope"):
        build(tiny_workspace, "ort-cpu-int8", [f], force=True)


# --- fidelity on real data ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ort-cpu-int8", "ts-fx-int8"])
def test_resnet20_int8_within_0_3_points(resnet20_workspace, cifar10, name):
    from edgekit.build import open_artifact
    from edgekit.harness import measure_accuracy
    from edgekit.pipeline import build
    from edgekit.preprocess import Preprocess
    from tests.conftest import RESNET20_TOP1

    m = build(resnet20_workspace, name, force=True, dataset=cifar10)
    assert m["calibration"]["images"] == 320
    runner, man = open_artifact(resnet20_workspace.artifact_dir(name), threads=2)
    try:
        acc = measure_accuracy(
            runner, cifar10.test.x, cifar10.test.y, Preprocess.from_dict(man["preprocess"]), 200
        )
    finally:
        runner.close()
    assert acc["images"] == 10_000
    assert acc["top1"] >= RESNET20_TOP1 - 0.3, acc["top1"]


def test_variant_overrides_options_and_keeps_the_backend():
    from edgekit.errors import EdgekitError
    from edgekit.targets import get_target, variant

    base = get_target("ort-cpu-int8")
    v = variant("ort-cpu-int8", "per-tensor", {"per_channel": False})
    assert v.name == "ort-cpu-int8.per-tensor" and v.backend == base.backend
    assert v.options == {**base.options, "per_channel": False} and base.options["per_channel"]
    with pytest.raises(EdgekitError, match="unknown target"):
        variant("no-such-target", "x", {})
