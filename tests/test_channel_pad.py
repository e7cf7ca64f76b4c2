"""The input-channel pad of ort-cpu-int8 (edgekit/channel_pad.py): same outputs, recorded,
applied only to the exact Q/DQ pattern it understands."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.test_cpu_targets import write_target

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _run(path, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def tiny_ds(tiny_npz):
    from edgekit.data import load_dataset

    return load_dataset(f"npz:{tiny_npz}")


@pytest.fixture(scope="module")
def int8_unpadded(tiny_workspace, tmp_path_factory):
    """An ort-cpu-int8 build of the tiny ResNet-8 with the pass off (3-channel stem)."""
    from edgekit.pipeline import build

    d = tmp_path_factory.mktemp("pad")
    f = write_target(d, "ort-cpu-int8", calib_per_class=4, pad_input_channels=False)
    m = build(tiny_workspace, "ort-cpu-int8", [f], force=True)
    assert "input_channel_pad" not in m["quantization"]
    out = d / "unpadded.onnx"
    shutil.copyfile(tiny_workspace.artifact_dir("ort-cpu-int8") / m["artifact"], out)
    return out


def test_pad_keeps_outputs_bit_exact(int8_unpadded, tmp_path, tiny_npz):
    from edgekit.channel_pad import pad_input_channels

    padded = tmp_path / "padded.onnx"
    shutil.copyfile(int8_unpadded, padded)
    rec = pad_input_channels(padded)
    assert rec["applied"] and rec["channels"] == [3, 4] and len(rec["convs"]) == 1
    m = onnx.load(str(padded))
    assert m.graph.node[0].op_type == "Pad"
    assert m.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3  # the input is unchanged
    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    a, b = _run(int8_unpadded, x), _run(padded, x)
    assert a.shape == (5, 10)
    np.testing.assert_array_equal(a, b)
    # the added channel's int8 weights are all zero, the first three unchanged
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    w4 = [w for w in inits.values() if w.dtype == np.int8 and w.ndim == 4 and w.shape[1] == 4]
    assert len(w4) == 1 and not w4[0][:, 3].any() and w4[0][:, :3].any()
    # a second pass finds nothing left to do and leaves the file alone
    before = padded.read_bytes()
    again = pad_input_channels(padded)
    assert not again["applied"] and padded.read_bytes() == before


def test_pattern_not_matched_is_left_alone(int8_unpadded, tmp_path):
    from edgekit.channel_pad import pad_input_channels

    # an FP32 graph (no QuantizeLinear after the input) is not rewritten
    m = onnx.load(str(int8_unpadded))
    fp = tmp_path / "noq.onnx"
    g = m.graph
    q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == g.input[0].name)
    q.op_type = "Identity"
    del q.input[1:]
    del q.attribute[:]
    onnx.save(m, str(fp))
    before = fp.read_bytes()
    rec = pad_input_channels(fp)
    assert rec == {"applied": False, "reason": "the input does not feed exactly one QuantizeLinear"}
    assert fp.read_bytes() == before
    # a multiple of 4 already: nothing to do
    rec = pad_input_channels(int8_unpadded, multiple=3)
    assert not rec["applied"] and "already a multiple of 3" in rec["reason"]


def test_build_records_the_pad_and_keeps_top1(tiny_workspace, tiny_ds, int8_unpadded, tmp_path):
    from edgekit.pipeline import build
    from edgekit.preprocess import Preprocess

    f = write_target(tmp_path, "ort-cpu-int8", calib_per_class=4)
    m = build(tiny_workspace, "ort-cpu-int8", [f], force=True)
    rec = m["quantization"]["input_channel_pad"]
    assert rec["applied"] and rec["channels"] == [3, 4]
    pre = Preprocess.from_dict(m["preprocess"])
    x = pre.apply(tiny_ds.test.x)
    art = tiny_workspace.artifact_dir("ort-cpu-int8") / m["artifact"]
    np.testing.assert_array_equal(_run(art, x).argmax(1), _run(int8_unpadded, x).argmax(1))
