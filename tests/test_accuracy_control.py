"""Issue 16: per-node INT8 sensitivity, the max_drop fallback, and their bad inputs.

The model is built by hand with one fragile layer: the tensor feeding ``conv_c`` has
one channel 1000x larger than the others (a huge activation outlier), so per-tensor
INT8 of that tensor wipes out the channels ``conv_c`` reads. Keeping ``conv_c`` in
FP32 (its input then stays FP32) recovers the accuracy; keeping any other node does
not. Labels are the FP32 model's own predictions, so FP32 top-1 is 100%.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from edgekit.accuracy_control import (  # noqa: E402
    AccuracyNotMetError,
    Evaluator,
    candidate_nodes,
    check_max_drop,
    dependency_groups,
    fallback_search,
    logits,
    session,
)
from edgekit.errors import EdgekitError  # noqa: E402

SIZE = 8
PER_CLASS = 150  # training images per class (2 classes)


def fragile_model(path: Path, bias=(0.0, 0.0)) -> Path:
    """conv_a -> relu -> conv_b (output channel 0 x1000) -> relu -> conv_c (ignores
    channel 0) -> relu -> GlobalAveragePool -> Flatten -> Gemm (2 classes)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    wa = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    wb = rng.normal(0, 0.5, (8, 8, 1, 1)).astype(np.float32)
    wb[0] *= 1000.0  # the outlier channel
    wc = rng.normal(0, 0.5, (8, 8, 1, 1)).astype(np.float32)
    wc[:, 0] = 0.0  # conv_c does not read the outlier channel
    wg = rng.normal(0, 1.0, (2, 8)).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [
            (wa, "wa"),
            (np.zeros(8, np.float32), "ba"),
            (wb, "wb"),
            (np.zeros(8, np.float32), "bb"),
            (wc, "wc"),
            (np.zeros(8, np.float32), "bc"),
            (wg, "wg"),
            (np.asarray(bias, np.float32), "bg"),
        ]
    ]
    nodes = [
        helper.make_node("Conv", ["input", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Conv", ["ar", "wb", "bb"], ["b"], name="conv_b"),
        helper.make_node("Relu", ["b"], ["br"], name="relu_b"),
        helper.make_node("Conv", ["br", "wc", "bc"], ["c"], name="conv_c"),
        helper.make_node("Relu", ["c"], ["cr"], name="relu_c"),
        helper.make_node("GlobalAveragePool", ["cr"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fragile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    """``(BuildContext, onnx path)``: a class-balanced uint8 training split labelled by
    the FP32 model's own predictions (PER_CLASS per class)."""
    from edgekit.backends.base import BuildContext
    from edgekit.preprocess import Preprocess

    d = tmp_path_factory.mktemp("fragile")
    path = fragile_model(d / "model.onnx")
    pre = Preprocess(height=SIZE, width=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (4000, SIZE, SIZE, 3), dtype=np.uint8)
    z = logits(session(path), pre.apply(x))
    path = fragile_model(path, -np.median(z, axis=0))  # centre the logits: both classes
    pred = logits(session(path), pre.apply(x)).argmax(1)
    keep = np.concatenate([np.flatnonzero(pred == c)[:PER_CLASS] for c in (0, 1)])
    assert len(keep) == 2 * PER_CLASS, "the FP32 model should predict both classes"
    split = SimpleNamespace(x=x[keep], y=pred[keep].astype(np.int64))
    ctx = BuildContext(path, None, pre, ["a", "b"], calib_split=split, seed=0)
    return ctx, path


def _opts(**kw):
    from edgekit.backends.onnxruntime import INT8_DEFAULTS

    return {**INT8_DEFAULTS, "calib_per_class": 16, **kw}


def test_groups_tie_the_inputs_of_a_residual_add():
    from onnx import TensorProto, helper

    # x -> conv1 -> relu -> conv2 ; x -> conv3 (projection) ; add(conv2, conv3) -> relu -> conv4
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w"], ["c2"], name="conv2"),
        helper.make_node("Conv", ["x", "w"], ["c3"], name="conv3"),
        helper.make_node("Add", ["c2", "c3"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r"], name="relu2"),
        helper.make_node("Conv", ["r", "w"], ["y"], name="conv4"),
    ]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(
        nodes, "res", [vi("x", TensorProto.FLOAT, [1, 1, 4, 4])], [vi("y", TensorProto.FLOAT, None)]
    )
    m = helper.make_model(g)
    cands = candidate_nodes(m, {"Conv", "Add", "Relu"})
    assert cands == ["conv1", "conv2", "conv3", "add", "conv4"]  # Relu is folded, not a candidate
    groups = dependency_groups(m, cands)
    assert sorted(map(sorted, groups)) == [["add", "conv2", "conv3"], ["conv1"], ["conv4"]]


def test_sensitivity_ranks_the_fragile_layer_first(fragile):
    from edgekit.backends.onnxruntime import build_int8
    from edgekit.sensitivity import format_table, sensitivity_report, write_report

    ctx, _ = fragile
    rep = sensitivity_report(ctx, _opts(), "ort-cpu-int8", build_int8, 100, log=lambda *_: None)
    assert rep["fp32_top1"] == 100.0
    assert rep["int8_top1"] < 90.0, "the outlier should break plain INT8"
    first = rep["groups"][0]
    assert first["nodes"] == ["conv_c"]
    assert first["top1_gain"] > 10.0
    assert all(g["top1_gain"] < first["top1_gain"] for g in rep["groups"][1:])
    # the activation error sees it too: conv_c's output is far noisier than conv_a's
    sq = {g["nodes"][0]: g["sqnr_db"] for g in rep["groups"]}
    assert sq["conv_c"] < sq["conv_a"] - 10
    assert rep["validation"]["split"] == "train" and rep["validation"]["images"] == 100
    table = format_table(rep)
    assert table.splitlines()[2].split()[3] == "conv_c"
    j, p = write_report(rep, ctx.onnx_path.parent, "ort-cpu-int8")
    assert json.loads(j.read_text())["groups"][0]["nodes"] == ["conv_c"]
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_max_drop_build_keeps_only_the_fragile_layer_and_records_it(fragile, tmp_path):
    from edgekit.build import build_target
    from edgekit.manifest import read_manifest
    from edgekit.targets import Target

    ctx, _ = fragile
    t = Target("ort-cpu-int8-acc", "onnxruntime", "int8", options=_opts(max_drop=2.0))
    m = build_target(t, ctx, tmp_path / "art")
    acc = m["quantization"]["accuracy_control"]
    # stopped as soon as the limit was met: conv_c, with the producer of its input
    # (conv_b, whose folded ReLU output ONNX Runtime would otherwise quantize)
    assert acc["fp32_nodes_added"] == ["conv_c", "relu_b", "conv_b"]
    assert acc["fp32_compute_nodes"] == ["conv_c", "conv_b"]
    assert acc["drop"] <= 2.0 < acc["fp32_top1"] - acc["int8_top1"]
    assert [s["group"] for s in acc["steps"]] == [[], ["conv_c"]]
    assert acc["validation"] == {
        "split": "train",
        "images": 50,  # min_images_for_drop(2.0)
        "seed": 0,
        "sampler": "class-balanced, disjoint from the calibration images",
    }
    assert acc["steps"][0]["latency_p50_ratio"] == 1.0 and acc["steps"][1]["latency_p50_ratio"] > 0
    assert "conv_c" in m["quantization"]["fp32_nodes"]
    assert acc["quantizable_nodes"] == 5  # conv_a, conv_b, conv_c, gap, fc
    read_manifest(tmp_path / "art", verify=True)  # schema and hashes hold
    # the artifact is what was measured: same top-1 on the slice
    xv, yv, _ = ctx.validation_set(50, 16)
    z = logits(session(tmp_path / "art" / "model.onnx"), xv)
    assert abs((z.argmax(1) == yv).mean() * 100 - acc["top1"]) < 1e-9


def test_fallback_that_cannot_meet_the_limit_fails_with_the_best_drop(fragile, tmp_path):
    ctx, path = fragile
    from edgekit.backends.onnxruntime import build_int8
    from edgekit.sensitivity import ort_quantizer, pre_processed

    model = pre_processed(path, tmp_path / "pre.onnx")
    real = ort_quantizer(ctx, _opts(), "t", build_int8, tmp_path / "cache.json")
    calls = []

    def never_helps(fp32_nodes, out_dir):  # ignores the FP32 nodes: nothing can help
        calls.append(list(fp32_nodes))
        return real([], out_dir)

    x, y, _ = ctx.validation_set(100, 16)
    ev = Evaluator(x, y, logits(session(path), x))
    with pytest.raises(AccuracyNotMetError, match=r"best drop reached was [0-9.]+ points") as e:
        types = {"Conv", "Gemm", "GlobalAveragePool", "Relu", "Flatten"}
        fallback_search(model, types, never_helps, ev, 1.0, tmp_path)
    assert e.value.exit_code == 1
    assert "of 5 quantizable nodes" in str(e.value)
    # full INT8, one ranking build per group, then one step per group: all of them tried
    assert len(calls) == 1 + 5 + 5
    assert set(calls[-1]) >= {"conv_a", "conv_b", "conv_c", "gap", "fc"}


@pytest.mark.parametrize("bad", [-0.5, 0, 100.5, float("nan"), True, "0.1"])
def test_max_drop_out_of_range_is_refused(bad):
    with pytest.raises(EdgekitError, match="max_drop"):
        check_max_drop(bad, None, "t")


def test_slice_too_small_says_how_many_images_are_needed():
    assert check_max_drop(0.1, None, "t") == 1000
    assert check_max_drop(0.5, 0, "t") == 200
    with pytest.raises(EdgekitError, match="needs at least 1,000 images"):
        check_max_drop(0.1, 500, "t")


def test_slice_larger_than_the_split_says_so(fragile, tmp_path):
    from edgekit.build import build_target
    from edgekit.targets import Target

    ctx, _ = fragile
    t = Target("acc", "onnxruntime", "int8", options=_opts(max_drop=0.1))  # needs 1,000
    with pytest.raises(EdgekitError, match=r"needs 1,000 training images"):
        build_target(t, ctx, tmp_path / "art")
    assert not (tmp_path / "art").exists()


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_cli_bad_inputs(tmp_path, tiny_workspace):
    tf = tmp_path / "acc.toml"
    tf.write_text(
        'name = "acc"\nbackend = "onnxruntime"\nprecision = "int8"\n[options]\nmax_drop = -1\n'
    )
    r = _cli("build", "-t", "acc", "--target-file", tf, "-w", tiny_workspace.root)
    assert r.returncode == 2 and "max_drop" in r.stderr and "Traceback" not in r.stderr
    tf.write_text(tf.read_text().replace("max_drop = -1", "max_drop = 0.1"))
    r = _cli("build", "-t", "acc", "--target-file", tf, "-w", tiny_workspace.root)
    assert r.returncode == 2 and "1,000" in r.stderr, r.stderr
    r = _cli("sensitivity", "-t", "ort-cpu", "-w", tiny_workspace.root)
    assert r.returncode == 2 and "not quantized" in r.stderr and "Traceback" not in r.stderr


def test_cli_maps_an_unmet_limit_to_exit_status_1(monkeypatch, capsys):
    import edgekit.cli as cli

    def fail():
        raise AccuracyNotMetError("acc: max_drop = 0.1 not met: the best drop reached was 0.3")

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith("error: acc: max_drop = 0.1 not met")


def test_harness_top1_breaks_ties_like_argmax():
    """INT8 logits are quantized, so ties occur: top-1 must pick the lowest class, as
    argmax (and torch) do; an unstable sort made edgekit bench disagree with edgekit qat's
    own check on 9 of 10,000 ResNet-20 test images."""
    from edgekit.harness import measure_accuracy

    rng = np.random.default_rng(0)
    z = (rng.integers(-20, 20, (2000, 10)) * 0.25).astype(np.float32)  # a coarse grid: ties

    class Quantized:
        batch_range = (1, None)

        def __call__(self, x):
            return z[x[:, 0, 0, 0].astype(int)]

    x = np.arange(2000, dtype=np.float32).reshape(-1, 1, 1, 1)
    y = z.argmax(1)
    acc = measure_accuracy(Quantized(), x, y, SimpleNamespace(apply=lambda v: v))
    assert acc["top1"] == 100.0


def test_report_row_counts_the_fp32_compute_nodes():
    from edgekit.harness import fp32_node_count

    acc = {
        "fp32_nodes_added": ["conv_c", "relu_b", "conv_b"],
        "fp32_compute_nodes": ["conv_c", "conv_b"],
    }
    q = {"fp32_nodes": ["conv_b", "conv_c", "relu_b", "pad"], "accuracy_control": acc}
    assert fp32_node_count({"precision": "int8", "quantization": q}) == 3  # + the unquantizable pad
    assert fp32_node_count({"precision": "int8", "quantization": {"fp32_nodes": []}}) == 0
    assert fp32_node_count({"precision": "fp32", "quantization": q}) is None
    # an edited manifest is counted, never a crash
    bad = {"fp32_nodes": [{"x": 1}, "a"], "accuracy_control": 5}
    assert fp32_node_count({"precision": "int8", "quantization": bad}) == 1
