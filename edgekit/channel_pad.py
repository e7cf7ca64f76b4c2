"""Pad a Q/DQ graph's input channels so its first INT8 convolution takes the fast kernel.

ONNX Runtime's x86 INT8 convolution (MLAS's symmetric "ConvSym" kernels, chosen by
``QLinearConv`` when the weights are int8 with zero point 0, as ``ort-cpu-int8``'s
per-channel weights are) requires the input channel count to be a multiple of 4
(onnxruntime ``core/providers/cpu/quantization/qlinearconv.cc``); a convolution with 3 input
channels, the RGB stem of every image classifier, falls back to the generic im2col + GEMM
path. Measured on the shared ResNet-18 (AVX-512 VNNI, 1 thread, ONNX Runtime's profiler):
the stem ran in 30 us, and in 15 us + 3 us for the ``Pad`` once padded to 4 channels
(``docs/targets.md``, "Close the ONNX Runtime speed gap").

:func:`pad_input_channels` rewrites::

    X[N,3,H,W] -> QuantizeLinear -> DequantizeLinear -> Conv(W int8 [M,3,kh,kw])

into::

    X -> Pad(channels to 4, value 0) -> QuantizeLinear -> DequantizeLinear
      -> Conv(W int8 [M,4,kh,kw], the added input channel's weights 0)

The added channel's weights are exactly 0, so the integer sums, hence the outputs, are
unchanged (the per-channel weight scales are per *output* channel, axis 0, and do not move).
The graph's input keeps its name, shape and dtype. Only this exact pattern is rewritten:
a graph input whose one consumer is a ``QuantizeLinear`` feeding only ``DequantizeLinear``
nodes that feed only ungrouped ``Conv`` nodes with constant int8 weights; anything else is
left as it is and reported as such.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.fileio import atomic_path
from edgekit.saturation import onnx_attr

#: MLAS's symmetric INT8 convolution needs input channels in multiples of this.
MULTIPLE = 4


def pad_input_channels(path: Path, multiple: int = MULTIPLE) -> dict:
    """Rewrite the Q/DQ ONNX at ``path`` in place (see the module doc).

    Args:
        path: a Q/DQ ONNX file (``quantize_static`` with ``quant_format = QDQ``) whose
            first input is float32 [N, C, H, W] with a static C.
        multiple: pad C up to a multiple of this (4: MLAS's ConvSym).

    Returns:
        ``{"applied": True, "input": NAME, "channels": [C, C_padded], "convs": [names]}``
        when rewritten, else ``{"applied": False, "reason": ...}`` (the file is untouched).
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = [v for v in g.input if v.name not in inits]
    if len(graph_inputs) != 1:
        return {"applied": False, "reason": "the graph has more than one input"}
    x = graph_inputs[0]
    dims = x.type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[1].HasField("dim_value"):
        return {"applied": False, "reason": "the input is not [N, C, H, W] with a static C"}
    c = int(dims[1].dim_value)
    cp = -(-c // multiple) * multiple
    if cp == c:
        return {"applied": False, "reason": f"{c} input channels: already a multiple of {multiple}"}

    consumers: dict[str, list] = {}
    producer = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n
    used_in_outputs = {v.name for v in g.output}

    def no(reason: str) -> dict:
        return {"applied": False, "reason": reason}

    first = consumers.get(x.name, [])
    if len(first) != 1 or first[0].op_type != "QuantizeLinear" or x.name in used_in_outputs:
        return no("the input does not feed exactly one QuantizeLinear")
    q = first[0]
    dqs = consumers.get(q.output[0], [])
    if not dqs or any(n.op_type != "DequantizeLinear" or n.input[0] != q.output[0] for n in dqs):
        return no("the quantized input does not feed only DequantizeLinear nodes")
    convs = [c2 for dq in dqs for c2 in consumers.get(dq.output[0], [])]
    if not convs or any(
        n.op_type != "Conv" or int(onnx_attr(n, "group", 1)) != 1 or n.input[0] not in
        {dq.output[0] for dq in dqs} for n in convs
    ):  # fmt: skip
        return no("the dequantized input does not feed only ungrouped Conv nodes")
    new_weights = {}
    for conv in convs:
        wdq = producer.get(conv.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            return no(f"Conv {conv.name or conv.output[0]}: weights are not a constant int8 DQ")
        if len(consumers.get(wdq.input[0], [])) != 1 or len(consumers.get(wdq.output[0], [])) != 1:
            return no(f"Conv {conv.name or conv.output[0]}: its weights are shared")
        scale = inits.get(wdq.input[1]) if len(wdq.input) > 1 else None
        per_tensor = scale is not None and int(np.prod(scale.dims)) == 1
        if scale is None or not (per_tensor or int(onnx_attr(wdq, "axis", 1)) in (0, -4)):
            return no(f"Conv {conv.name or conv.output[0]}: weight scales not per output channel")
        w = numpy_helper.to_array(inits[wdq.input[0]])
        if w.dtype != np.int8 or w.ndim != 4 or w.shape[1] != c:
            return no(f"Conv {conv.name or conv.output[0]}: weights are not int8 [M, {c}, kh, kw]")
        pad = np.zeros((w.shape[0], cp - c) + w.shape[2:], np.int8)
        new_weights[wdq.input[0]] = np.concatenate([w, pad], axis=1)

    for name, w in new_weights.items():
        inits[name].CopyFrom(numpy_helper.from_array(w, name))
    pads_name, out_name = f"{x.name}_channel_pads", f"{x.name}_channel_padded"
    g.initializer.append(
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, cp - c, 0, 0], np.int64), pads_name)
    )
    pad = helper.make_node(
        "Pad", [x.name, pads_name], [out_name], name="edgekit_input_channel_pad", mode="constant"
    )
    q.input[0] = out_name
    g.node.insert(0, pad)
    # value_info recorded by shape inference for the Conv's weight no longer matches
    stale = {q.output[0]} | {dq.output[0] for dq in dqs}
    stale |= {producer[cv.input[1]].output[0] for cv in convs}
    keep = [v for v in g.value_info if v.name not in stale]
    del g.value_info[:]
    g.value_info.extend(keep)
    onnx.checker.check_model(m)
    with atomic_path(path, force=True) as tmp:
        onnx.save(m, str(tmp))
    return {
        "applied": True,
        "input": x.name,
        "channels": [c, cp],
        "convs": [cv.name or cv.output[0] for cv in convs],
    }
