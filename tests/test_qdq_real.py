"""CPU proofs on the real CIFAR-10 test set with the shared ResNet-20: the ONNX graphs
edgekit feeds TensorRT, run in ONNX Runtime (the TensorRT build itself is not run)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import RESNET20_TOP1


def _logits(path, pre, test):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = s.get_inputs()[0].name
    return np.concatenate(
        [s.run(None, {n: pre.apply(test.x[i : i + 500])})[0] for i in range(0, len(test.y), 500)]
    )


@pytest.mark.slow
def test_qdq_and_fp16_for_tensorrt_on_real_data(resnet20_workspace, cifar10):
    from edgekit.pipeline import build, build_context

    ctx = build_context(resnet20_workspace, cifar10)
    q = build(resnet20_workspace, "trt-int8", onnx_only=True, force=True, dataset=cifar10)
    f = build(resnet20_workspace, "trt-fp16", onnx_only=True, force=True, dataset=cifar10)
    l32 = _logits(resnet20_workspace.onnx, ctx.preprocess, cifar10.test)
    lq = _logits(q["path"], ctx.preprocess, cifar10.test)
    l16 = _logits(f["path"], ctx.preprocess, cifar10.test)
    y = cifar10.test.y
    top1_q = (lq.argmax(1) == y).mean() * 100
    assert abs(top1_q - RESNET20_TOP1) <= 0.5, top1_q
    assert (l16.argmax(1) == l32.argmax(1)).mean() >= 0.995
