"""INT8 saturation on x86 CPUs without VNNI: a static check and a numerical emulator.

ONNX Runtime's MLAS runs a U8S8 ``QLinearConv``/``QGemm`` (uint8 activations, int8
weights) on AVX2 and on AVX-512 without VNNI through ``vpmaddubsw``: it multiplies
the *raw* uint8 activation bytes (zero point not subtracted; MLAS corrects for it
afterwards with row/column sums) by the int8 weights and adds each adjacent pair
of products into a **saturating int16**; ``vpmaddwd`` with ones then widens to
int32 (MLAS ``QgemmU8S8KernelAvx2``, ``SymQgemmU8KernelAvx512``'s "Avx512Core"
macro). With VNNI, ``vpdpbusd(s)`` accumulates the four products in int32 and
nothing saturates. ONNX Runtime's quantization docs recommend ``reduce_range``
(7-bit weights) or S8S8 for such CPUs.

The pairs are adjacent along the reduction axis K after MLAS's reordering. For a
convolution, ``QLinearConv::ReorderFilter`` stores the filter as
``[kh*kw][C_in][C_out]``: K runs over kernel taps, input channels innermost, so a
pair is two adjacent input channels at one tap (it crosses taps only when
``C_in`` is odd, as in the 3-channel stem). For a Gemm/MatMul, K is the
feature axis. This is our reading of the ONNX Runtime source, not a documented
contract; :class:`QdqEmulator` takes ``order="chw"`` (kernel taps innermost)
as the alternative to bound the effect of a different pairing.

A pair can saturate only if its two weights have the same sign and
``|w0| + |w1| > 32767 / 255`` (that is >= 129): with opposite signs, or with
7-bit weights (|w| <= 64, ``reduce_range``), ``|a0*w0 + a1*w1| <= 32640``.
:func:`risky_weight_pairs` counts such pairs in a QDQ model (a property of the
artifact alone); :class:`QdqEmulator` evaluates the QDQ graph in PyTorch with or
without the int16 saturation, to predict the top-1 of the same artifact on a
non-VNNI CPU.

Depthwise/grouped convolutions take another MLAS path (not emulated: treated as
non-saturating) and S8S8 models (int8 activations) are outside the U8S8 kernel;
both are reported, not emulated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
#: smallest |w0| + |w1| (same sign) for which 255 * (|w0| + |w1|) exceeds int16
RISKY_SUM = 129


def onnx_attr(node, name, default=None):
    """The value of ONNX node attribute ``name``, or ``default``."""
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def weight_k_matrix(w: np.ndarray, order: str = "hwc") -> np.ndarray:
    """The int8 weights as ``[M, K]`` in MLAS's reduction order, K padded to even.

    Args:
        w: int [M, C, kh, kw] (a convolution) or [M, K] (a Gemm, output-major).
        order: ``"hwc"`` (kernel taps outer, input channels inner: MLAS's
            ``ReorderFilter``), ``"hwc_pad"`` (the same with an odd channel count
            padded to even at each tap, so no pair crosses a tap) or ``"chw"``
            (ONNX's own layout): the alternatives bound the pairing.
    """
    if w.ndim == 4:
        if order == "hwc_pad" and w.shape[1] % 2:
            w = np.concatenate([w, np.zeros_like(w[:, :1])], axis=1)
        w = w.transpose(0, 2, 3, 1) if order in ("hwc", "hwc_pad") else w
    w = w.reshape(w.shape[0], -1).astype(np.int32)
    if w.shape[1] % 2:
        w = np.concatenate([w, np.zeros((w.shape[0], 1), np.int32)], axis=1)
    return w


def risky_pairs_mask(wk: np.ndarray) -> np.ndarray:
    """bool [M, K/2]: the weight pairs that can exceed int16 with uint8 activations."""
    w0, w1 = wk[:, 0::2], wk[:, 1::2]
    return (w0 * w1 > 0) & (np.abs(w0) + np.abs(w1) >= RISKY_SUM)


def _qdq_matmuls(model):
    """Yield ``(node, x_dq, w_q int array, w_dq node)`` for each Conv/Gemm/MatMul whose
    input and weight both come from DequantizeLinear of an initializer weight."""
    from onnx import numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        px, pw = producer.get(n.input[0]), producer.get(n.input[1])
        if not (
            px and pw and px.op_type == "DequantizeLinear" and pw.op_type == "DequantizeLinear"
        ):
            continue
        if pw.input[0] not in init:
            continue
        w = numpy_helper.to_array(init[pw.input[0]])
        if n.op_type == "MatMul" or (n.op_type == "Gemm" and not onnx_attr(n, "transB", 0)):
            w = w.T  # [K, M] -> [M, K]
        yield n, px, w, pw


def _qoperator_weights(model):
    """Yield ``(node, int weight [M, ...])`` of QOperator-format nodes (``QLinearConv``,
    ``QLinearMatMul``, ``QGemm``) whose weight is an initializer."""
    from onnx import numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("QLinearConv", "QLinearMatMul", "QGemm") and len(n.input) > 3:
            if n.input[3] not in init:
                continue
            w = numpy_helper.to_array(init[n.input[3]])
            if n.op_type == "QLinearMatMul" or (
                n.op_type == "QGemm" and not onnx_attr(n, "transB", 0)
            ):
                w = w.T
            yield n, w


def risky_weight_pairs(onnx_path: str | Path, order: str = "hwc") -> dict:
    """Count the weight pairs of a quantized model that can saturate int16 on a non-VNNI CPU.

    Looks at Conv/Gemm/MatMul fed by DequantizeLinear weights (QDQ format) and at
    ``QLinearConv``/``QLinearMatMul``/``QGemm`` (QOperator format).

    Returns:
        ``{"pairs": int, "risky": int, "nodes": {node name or index: risky count},
        "skipped": [reasons]}``. ``risky == 0`` means the model cannot saturate
        ``vpmaddubsw`` whatever the uint8 activations are (a sufficient condition).
    """
    import onnx

    model = onnx.load(str(onnx_path))
    total = risky = 0
    nodes: dict[str, int] = {}
    skipped = []
    found = [(n, w) for n, _px, w, _pw in _qdq_matmuls(model)] + list(_qoperator_weights(model))
    for i, (n, w) in enumerate(found):
        name = n.name or f"{n.op_type}#{i}"
        if w.dtype != np.int8:
            skipped.append(f"{name}: weights {w.dtype}, not int8")
            continue
        if n.op_type in ("Conv", "QLinearConv") and int(onnx_attr(n, "group", 1)) != 1:
            skipped.append(f"{name}: grouped convolution (another MLAS kernel)")
            continue
        mask = risky_pairs_mask(weight_k_matrix(w, order))
        total += mask.size
        r = int(mask.sum())
        risky += r
        if r:
            nodes[name] = r
    return {"pairs": total, "risky": risky, "nodes": nodes, "skipped": skipped}


class QdqEmulator:
    """Evaluate a QDQ ONNX model in PyTorch, optionally with MLAS's int16 pair saturation.

    Quantize/DequantizeLinear are computed exactly (round half to even, clamp);
    Conv/Gemm/MatMul run in float32 on the dequantized values (the same sums as the
    int32 accumulation, up to float rounding) and, with ``saturate=True``, each one
    fed by a uint8 DequantizeLinear activation and int8 weights gets the correction
    ``x_scale * w_scale[m] * sum(clamp(p) - p)`` over its adjacent pairs
    ``p = a[k]*w[k] + a[k+1]*w[k+1]`` of raw uint8 activations (padding = the zero
    point, as ONNX Runtime pads). Only pairs flagged by :func:`risky_pairs_mask` are
    evaluated: the others cannot saturate.

    Args:
        onnx_path: a QDQ model (``ort-cpu-int8`` artifact).
        saturate: emulate ``vpmaddubsw`` (non-VNNI) or not (VNNI, exact int32).
        order: pairing order, ``"hwc"`` (MLAS), ``"hwc_pad"`` or ``"chw"`` (bounds).

    Attributes:
        stats: node name -> ``{"pairs": evaluated pair-sums, "saturated": count}``,
            accumulated over calls (``pairs`` counts every pair-sum of the node, risky
            or not).

    Raises:
        NotImplementedError: an operator outside the small set CNN classifiers use.
    """

    def __init__(self, onnx_path: str | Path, saturate: bool = True, order: str = "hwc"):
        import onnx
        import torch
        from onnx import numpy_helper

        self.model = onnx.load(str(onnx_path))
        self.saturate, self.order = saturate, order
        self.torch = torch
        self.consts: dict = {}
        self.qtype: dict[str, np.dtype] = {}
        for t in self.model.graph.initializer:
            a = numpy_helper.to_array(t)
            if a.dtype in (np.uint8, np.int8):
                self.qtype[t.name] = a.dtype
            self.consts[t.name] = torch.from_numpy(
                a.astype(np.float32 if a.dtype != np.int64 else np.int64)
            )
        self.producer = {o: n for n in self.model.graph.node for o in n.output}
        self.sat: dict[str, tuple] = {}
        self.stats: dict[str, dict] = {}
        init = {t.name for t in self.model.graph.initializer}
        for i, (n, px, w, _pw) in enumerate(_qdq_matmuls(self.model)):
            if w.dtype != np.int8 or px.input[0] in init:
                continue
            if len(px.input) < 3 or self.qtype.get(px.input[2]) != np.uint8:
                continue  # int8 (S8S8) activations: not the U8S8 vpmaddubsw path
            if n.op_type == "Conv" and int(onnx_attr(n, "group", 1)) != 1:
                continue
            wk = weight_k_matrix(w, order)
            mask = risky_pairs_mask(wk)
            m_idx, j_idx = np.nonzero(mask)
            key = n.output[0]
            self.sat[key] = (
                torch.from_numpy(m_idx.astype(np.int64)),
                torch.from_numpy(j_idx.astype(np.int64)),
                torch.from_numpy(wk[m_idx, 2 * j_idx].astype(np.float32)),
                torch.from_numpy(wk[m_idx, 2 * j_idx + 1].astype(np.float32)),
                wk.shape,
                w.shape,
            )
            self.stats[n.name or f"{n.op_type}#{i}"] = {"pairs": 0, "saturated": 0}
            self.sat[key] += (n.name or f"{n.op_type}#{i}",)

    # ---- operators -------------------------------------------------------------------
    def _q(self, x, s, zp, axis, dtype):
        shape = [1] * x.dim()
        if s.numel() > 1:
            shape[axis] = -1
        lo, hi = (0, 255) if dtype == np.uint8 else (-128, 127)
        zp = zp.reshape(shape) if zp is not None else 0
        return (self.torch.round(x / s.reshape(shape)) + zp).clamp(lo, hi)

    def _dq(self, q, s, zp, axis):
        shape = [1] * q.dim()
        if s.numel() > 1:
            shape[axis] = -1
        zp = zp.reshape(shape) if zp is not None else 0
        return (q - zp) * s.reshape(shape)

    def _correction(self, node, env, y):
        """The saturation correction for a Conv/Gemm output ``y`` (float)."""
        torch = self.torch
        m_idx, j_idx, w0, w1, kshape, wshape, name = self.sat[node.output[0]]
        px = self.producer[node.input[0]]
        qx = env[px.input[0]]  # raw uint8 values (float)
        sx = env[px.input[1]].reshape(())
        zpx = env[px.input[2]].reshape(()) if len(px.input) > 2 else torch.tensor(0.0)
        pw = self.producer[node.input[1]]
        sw = env[pw.input[1]].reshape(-1)
        n_out = kshape[0]
        st = self.stats[name]
        if node.op_type == "Conv":
            kh, kw = wshape[2], wshape[3]
            pads = list(onnx_attr(node, "pads", [0, 0, 0, 0]))
            strides = list(onnx_attr(node, "strides", [1, 1]))
            dil = list(onnx_attr(node, "dilations", [1, 1]))
            xp = torch.nn.functional.pad(qx, (pads[1], pads[3], pads[0], pads[2]), value=float(zpx))
            u = torch.nn.functional.unfold(xp, (kh, kw), dilation=dil, stride=strides)
            c = wshape[1]
            n, _, L = u.shape
            # unfold's K order is (c, kh, kw); MLAS's is (kh, kw, c) for "hwc"
            if self.order in ("hwc", "hwc_pad"):
                u = u.reshape(n, c, kh * kw, L)
                if self.order == "hwc_pad" and c % 2:
                    u = torch.cat([u, torch.zeros(n, 1, kh * kw, L)], dim=1)
                    c += 1
                u = u.transpose(1, 2).reshape(n, c * kh * kw, L)
        else:
            u = qx.reshape(qx.shape[0], -1, 1)
            n, _, L = u.shape
        if u.shape[1] % 2:
            u = torch.cat([u, torch.zeros(n, 1, L)], dim=1)
        st["pairs"] += n * L * kshape[0] * (kshape[1] // 2)
        if len(m_idx) == 0:
            return y
        a0, a1 = u[:, 2 * j_idx, :], u[:, 2 * j_idx + 1, :]  # [n, S, L]
        p = a0 * w0[None, :, None] + a1 * w1[None, :, None]
        exc = p.clamp(INT16_MIN, INT16_MAX) - p
        st["saturated"] += int((exc != 0).sum())
        corr = torch.zeros(n, n_out, L)
        corr.index_add_(1, m_idx, exc)
        corr = corr * (sx * sw.reshape(1, -1, 1))
        return y + corr.reshape(y.shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, C, H, W] -> float32 [N, classes] logits."""
        torch = self.torch
        F = torch.nn.functional
        g = self.model.graph
        env = dict(self.consts)
        env[g.input[0].name] = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        qtype = dict(self.qtype)
        for node in g.node:
            op, ins = node.op_type, [env.get(i) if i else None for i in node.input]
            if op == "QuantizeLinear":
                dt = qtype.get(node.input[2], np.uint8) if len(node.input) > 2 else np.uint8
                qtype[node.output[0]] = dt
                out = self._q(
                    ins[0], ins[1], ins[2] if len(ins) > 2 else None, onnx_attr(node, "axis", 1), dt
                )
            elif op == "DequantizeLinear":
                out = self._dq(
                    ins[0], ins[1], ins[2] if len(ins) > 2 else None, onnx_attr(node, "axis", 1)
                )
            elif op == "Conv":
                k = ins[1].shape[2:]
                pads = list(onnx_attr(node, "pads", [0] * (2 * len(k))))
                xin = F.pad(ins[0], (pads[1], pads[3], pads[0], pads[2]))
                out = F.conv2d(
                    xin,
                    ins[1],
                    ins[2] if len(ins) > 2 else None,
                    stride=list(onnx_attr(node, "strides", [1, 1])),
                    dilation=list(onnx_attr(node, "dilations", [1, 1])),
                    groups=int(onnx_attr(node, "group", 1)),
                )
                if self.saturate and node.output[0] in self.sat:
                    out = self._correction(node, env, out)
            elif op in ("Gemm", "MatMul"):
                a, b = ins[0], ins[1]
                if op == "Gemm":
                    if onnx_attr(node, "transA", 0):
                        a = a.T
                    if onnx_attr(node, "transB", 0):
                        b = b.T
                    out = onnx_attr(node, "alpha", 1.0) * (a @ b)
                    if len(ins) > 2 and ins[2] is not None:
                        out = out + onnx_attr(node, "beta", 1.0) * ins[2]
                else:
                    out = a @ b
                if self.saturate and node.output[0] in self.sat:
                    out = self._correction(node, env, out)
            elif op == "Relu":
                out = F.relu(ins[0])
            elif op == "Clip":
                lo = (
                    ins[1]
                    if len(ins) > 1 and ins[1] is not None
                    else onnx_attr(node, "min", -np.inf)
                )
                hi = (
                    ins[2]
                    if len(ins) > 2 and ins[2] is not None
                    else onnx_attr(node, "max", np.inf)
                )
                out = ins[0].clamp(float(lo), float(hi))
            elif op in ("Add", "Mul", "Sub", "Div"):
                fn = {"Add": torch.add, "Mul": torch.mul, "Sub": torch.sub, "Div": torch.div}[op]
                out = fn(ins[0], ins[1])
            elif op == "ReduceMean":
                axes = (
                    ins[1].tolist()
                    if len(ins) > 1 and ins[1] is not None
                    else onnx_attr(node, "axes")
                )
                out = ins[0].mean(
                    dim=tuple(int(a) for a in axes), keepdim=bool(onnx_attr(node, "keepdims", 1))
                )
            elif op == "GlobalAveragePool":
                out = ins[0].mean(dim=(2, 3), keepdim=True)
            elif op == "AveragePool":
                out = F.avg_pool2d(
                    ins[0],
                    list(onnx_attr(node, "kernel_shape")),
                    list(onnx_attr(node, "strides", [1, 1])),
                )
            elif op == "MaxPool":
                pads = list(onnx_attr(node, "pads", [0, 0, 0, 0]))
                xin = F.pad(ins[0], (pads[1], pads[3], pads[0], pads[2]), value=-np.inf)
                out = F.max_pool2d(
                    xin,
                    list(onnx_attr(node, "kernel_shape")),
                    list(onnx_attr(node, "strides", [1, 1])),
                )
            elif op == "Flatten":
                out = ins[0].flatten(int(onnx_attr(node, "axis", 1)))
            elif op == "Reshape":
                shape = [int(v) for v in ins[1].tolist()]
                shape = [ins[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
                out = ins[0].reshape(shape)
            elif op == "Identity":
                out = ins[0]
            elif op == "Pad":
                p = [int(v) for v in ins[1].tolist()]
                half = len(p) // 2
                tp = []
                for d in reversed(range(half)):
                    tp += [p[d], p[d + half]]
                val = float(ins[2]) if len(ins) > 2 and ins[2] is not None else 0.0
                out = F.pad(ins[0], tp, value=val)
            elif op == "Slice":
                starts, ends = ins[1].tolist(), ins[2].tolist()
                axes = (
                    ins[3].tolist() if len(ins) > 3 and ins[3] is not None else range(len(starts))
                )
                steps = (
                    ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
                )
                idx = [slice(None)] * ins[0].dim()
                for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
                    e = min(int(e), ins[0].shape[a]) if e < 2**62 else None
                    idx[a] = slice(int(s), e, int(st))
                out = ins[0][tuple(idx)]
            elif op == "Concat":
                out = torch.cat(ins, dim=int(onnx_attr(node, "axis")))
            elif op == "Constant":
                from onnx import numpy_helper

                a = numpy_helper.to_array(onnx_attr(node, "value"))
                out = torch.from_numpy(a.astype(np.float32 if a.dtype != np.int64 else np.int64))
            else:
                raise NotImplementedError(f"QdqEmulator: operator {op} is not emulated")
            env[node.output[0]] = out
        return env[g.output[0].name].numpy()


def emulate_top1(
    onnx_path: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    saturate: bool,
    batch: int = 50,
    order: str = "hwc",
) -> dict:
    """Top-1 (%) of a QDQ model evaluated by :class:`QdqEmulator` on preprocessed images.

    Args:
        x: float32 [N, C, H, W] preprocessed images; y: int [N] labels.

    Returns:
        ``{"top1": float, "images": N, "pred": int [N], "stats": per-node counts}``.
    """
    import torch

    em = QdqEmulator(onnx_path, saturate=saturate, order=order)
    preds = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            preds.append(em(x[i : i + batch]).argmax(1))
    pred = np.concatenate(preds)
    return {
        "top1": float((pred == y).mean() * 100),
        "images": int(len(y)),
        "pred": pred,
        "stats": em.stats,
    }
