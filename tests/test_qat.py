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
    assert m["quantization"]["input_channel_pad"]["applied"]  # as ort-cpu-int8 builds
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
    # 7-bit weights by default (reduce_range, as ort-cpu-int8 deploys): no int8 weight
    # pair can saturate int16 on a CPU without VNNI, and the manifest says so
    w = np.concatenate([onnx.numpy_helper.to_array(t).ravel() for t in int8])
    assert w.min() >= -64 and w.max() <= 63 and np.abs(w).max() >= 60
    assert m["options"]["reduce_range"] is True
    assert m["isa"]["saturation_safe"] is True and m["isa"]["requires"] is None
    assert m["isa"]["risky_weight_pairs"] == 0 and m["isa"]["kernel"] == "U8S8"
    from edgekit.isa import isa_problem

    assert isa_problem(m, isa={"vnni": False}, x86=True) is None
    axis = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.attribute]
    assert axis, "weights are quantized per channel (DequantizeLinear with an axis)"
    runner, _ = open_artifact(out, threads=1)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    assert runner(x).shape == (2, 10)
    with pytest.raises(EdgekitError, match="already exists"):
        run_qat(qat_ws, build_context(qat_ws, ds), ds.test, cfg)


@pytest.mark.parametrize(
    "kw",
    [
        {"epochs": 0},
        {"epochs": 101},
        {"steps": 0},
        {"lr": 0},
        {"lr": float("nan")},
        {"batch": 0},
        {"distill": -0.1},
        {"distill": 1.5},
        {"distill": float("nan")},
        {"temperature": 0},
    ],
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


def test_qat_full_range_weights_are_recorded_as_needing_vnni(qat_ws):
    """--full-range: 8-bit weights, and the manifest's isa record (computed from the
    exported weights, as ort-cpu-int8 does) says the artifact relies on VNNI."""
    from edgekit.isa import isa_problem
    from edgekit.pipeline import build_context, load_workspace_dataset
    from edgekit.qat import TARGET, QatConfig, run_qat

    ds = load_workspace_dataset(qat_ws.record())
    cfg = QatConfig(epochs=1, steps=1, batch=16, init_per_class=2, reduce_range=False)
    m = run_qat(qat_ws, build_context(qat_ws, ds), ds.test, cfg)
    model = onnx.load(str(qat_ws.artifact_dir(TARGET) / "model.onnx"))
    w = np.concatenate(
        [
            onnx.numpy_helper.to_array(t).ravel()
            for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2
        ]
    )
    assert np.abs(w.astype(int)).max() >= 127
    assert m["options"]["reduce_range"] is False
    assert m["isa"]["risky_weight_pairs"] > 0
    assert m["isa"]["requires"] == "vnni" and m["isa"]["saturation_safe"] is False
    assert "VNNI" in isa_problem(m, isa={"vnni": False}, x86=True)
    assert isa_problem(m, isa={"vnni": True}, x86=True) is None


def test_widened_weight_quantizer_gives_the_same_weights():
    """The exporter takes only -128..127: a 7-bit quantizer is widened after clamping
    the float weight, which must leave the fake-quantized weight unchanged."""
    import torch

    from edgekit.qat import freeze, prepare, widen_weight_ranges

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(4, 3, 8, 8)
    q = prepare(net, x)
    q(x)  # observe
    freeze(q)
    convs = [m for m in q.modules() if hasattr(m, "weight_fake_quant")]
    with torch.no_grad():
        for c in convs:  # push weights beyond the 7-bit range the scale was set for
            c.weight.mul_(1.5)
    before = [c.weight_fake_quant(c.weight).detach().clone() for c in convs]
    y0 = q(x).detach()
    assert widen_weight_ranges(q) == len(convs) == 2
    for c, b in zip(convs, before, strict=True):
        assert (c.weight_fake_quant.quant_min, c.weight_fake_quant.quant_max) == (-128, 127)
        after = c.weight_fake_quant(c.weight)
        assert torch.equal(after, b)
        k = torch.round(after / c.weight_fake_quant.scale.reshape(-1, 1, 1, 1))
        assert k.min() >= -64 and k.max() <= 63
    assert torch.equal(q(x), y0)
    assert widen_weight_ranges(q) == 0  # already full range


def test_qat_distillation_trains_towards_the_teacher(qat_ws):
    """--distill 1: the loss is the KD loss against the teacher's logits, not the labels:
    after four steps towards a teacher that always answers class 0, the model answers
    class 0 for (nearly) every test image; trained on the labels it does not."""
    import torch

    from edgekit.pipeline import build_context, load_workspace_dataset
    from edgekit.qat import QatConfig, fine_tune, prepare

    ds = load_workspace_dataset(qat_ws.record())
    ctx = build_context(qat_ws, ds)

    class Zero(torch.nn.Module):
        def forward(self, x):
            out = torch.full((x.shape[0], 10), -10.0)
            out[:, 0] = 10.0
            return out

    example = torch.from_numpy(ctx.preprocess.apply(ds.test.x[:2]))
    share = {}
    for alpha in (0.0, 1.0):
        torch.manual_seed(0)
        q = prepare(ctx.torch_model(), example)
        cfg = QatConfig(epochs=1, steps=4, batch=16, lr=0.01, distill=alpha)
        rec = fine_tune(q, ctx.calib_split, ctx.preprocess, cfg, torch.device("cpu"), None, Zero())
        assert rec["steps"] == 4
        q.eval()
        with torch.no_grad():
            share0 = (q(torch.from_numpy(ctx.preprocess.apply(ds.test.x))).argmax(1) == 0).float()
        share[alpha] = float(share0.mean())
    assert share[1.0] >= 0.9
    assert share[1.0] > share[0.0] + 0.3


def test_calibrated_scales_are_ptq_minmax_and_stay_frozen(qat_ws):
    """activation_ranges = "calibrated": the input's quantizer holds the global min/max of
    the calibration images (ONNX Runtime's MinMax), and no scale moves while the weights
    train; with "moving" the observers follow the training batches."""
    import torch
    from torch.ao.quantization import FakeQuantize, disable_observer

    from edgekit.pipeline import build_context, load_workspace_dataset
    from edgekit.qat import QatConfig, fine_tune, init_observers, prepare

    ds = load_workspace_dataset(qat_ws.record())
    ctx = build_context(qat_ws, ds)
    xc, _, _ = ctx.calibration_for("ort-cpu-int8-qat", 2)
    example = torch.from_numpy(xc[:2])
    scales = {}
    for mode in ("calibrated", "moving"):
        q = prepare(ctx.torch_model(), example, True, mode)
        init_observers(q, xc, torch.device("cpu"))
        if mode == "calibrated":
            q.apply(disable_observer)
        fqs = {n: m for n, m in q.named_modules() if isinstance(m, FakeQuantize)}
        first = fqs[min(n for n in fqs if not n.endswith("weight_fake_quant"))]
        lo, hi = min(float(xc.min()), 0.0), max(float(xc.max()), 0.0)
        if mode == "calibrated":  # the input quantizer's range is the calibration min/max
            assert float(first.scale) == pytest.approx((hi - lo) / 255, rel=1e-5)
        before = {n: m.scale.clone() for n, m in fqs.items()}
        cfg = QatConfig(epochs=1, steps=3, batch=16, lr=0.05, activation_ranges=mode)
        fine_tune(q, ctx.calib_split, ctx.preprocess, cfg, torch.device("cpu"))
        moved = [n for n, m in fqs.items() if not torch.equal(m.scale, before[n])]
        scales[mode] = moved
    assert scales["calibrated"] == []
    assert len(scales["moving"]) > 0


def test_unknown_activation_ranges_is_refused():
    from edgekit.qat import QatConfig

    with pytest.raises(EdgekitError, match="activation-ranges"):
        QatConfig(activation_ranges="learned").check()
