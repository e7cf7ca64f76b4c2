"""ONNX graphs prepared for TensorRT: explicit INT8 Q/DQ, and FP16.

TensorRT 11 builds only strongly typed networks: INT8 must be expressed by
QuantizeLinear/DequantizeLinear nodes in the ONNX ("explicit quantization"), and
FP16 by an ONNX graph whose tensors already are float16. TensorRT 10 accepts the
same graphs. Both graphs also run in ONNX Runtime on a CPU, which is how edgekit
checks them where no TensorRT exists.

* :func:`make_qdq_onnx`: symmetric INT8 Q/DQ (zero point 0), per-channel weights,
  per-tensor activations, made by ONNX Runtime's ``quantize_static`` (QDQ format,
  ``ActivationSymmetric``/``WeightSymmetric``, QInt8 for both: the settings ONNX
  Runtime documents for GPU/TensorRT). The activation ranges come from edgekit's
  own array-API statistics (:mod:`edgekit.calibration`) over the class-balanced
  calibration set, passed as ``TensorQuantOverrides``, and are cached.
* :func:`make_fp16_onnx`: onnxconverter-common's
  ``float16.convert_float_to_float16(keep_io_types=True)``, with a block list of
  ops and of nodes whose activations overflow the FP16 range (kept in FP32).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.fileio import sha256_file

#: Largest finite float16.
FP16_MAX = 65504.0
#: Ops kept in FP32 by default (exponentials overflow easily). Reductions are not
#: blocked: onnxconverter-common 1.16 writes an ill-typed Cast for a blocked
#: ReduceMean (ORT refuses the model); overflowing ones are caught by measurement.
FP16_OP_BLOCK = ("Softmax", "LogSoftmax", "Exp", "Pow")


def preprocess_onnx(onnx_path: Path, out_path: Path) -> Path:
    """ONNX Runtime's ``quant_pre_process`` (shape inference + graph optimization),
    recommended before ``quantize_static``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(onnx_path), str(out_path), skip_symbolic_shape=True)
    return out_path


def quant_pre_process_checked(
    onnx_path: Path, out_path: Path, *, optimize: bool = True, where: str = ""
) -> Path:
    """``quant_pre_process`` with symbolic shape inference, as ``ort-cpu-int8`` runs it
    (its node names are those ``nodes_to_exclude`` and the sensitivity report use).

    Args:
        optimize: the target's ``pre_process_optimize`` (False: ``skip_optimization``).
        where: the target name, for the error.

    Raises:
        EdgekitError: shape inference or optimization failed on the graph.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(
            str(onnx_path), str(out_path), skip_optimization=not optimize, skip_symbolic_shape=False
        )
    except Exception as e:  # symbolic shape inference fails on some graphs
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgekitError(
            f"{where}: quant_pre_process failed on {onnx_path}: {first}",
            "check the ONNX export (edgekit export) or simplify the model",
        ) from None
    return out_path


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over host batches."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self.name, self.batches, self.i = name, batches, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def make_qdq_onnx(
    onnx_path: Path,
    out_path: Path,
    calib_x: np.ndarray,
    *,
    method: str = "entropy",
    percentile: float = 99.99,
    batch: int = 32,
    device: str = "auto",
    cache_dir: Path | None = None,
    keep_removable_activations: bool = True,
    dedicated_qdq_pair: bool = False,
    log=None,
) -> dict:
    """Write the explicit-quantization (Q/DQ) ONNX that TensorRT's INT8 build consumes.

    Args:
        onnx_path: the FP32 ONNX model.
        out_path: where to write the Q/DQ model.
        calib_x: float32 [N, C, H, W], the class-balanced calibration set,
            preprocessed as for evaluation.
        method: activation statistics: ``entropy`` (TensorRT's KL method),
            ``percentile`` or ``minmax``.
        batch: calibration batch size.
        device: where calibration batches live: ``auto`` (CuPy on a CUDA GPU, else
            NumPy), ``cuda`` or ``cpu``.
        cache_dir: calibration cache directory (None: no cache).
        keep_removable_activations: keep ReLU/Clip explicit after Q/DQ
            (``QDQKeepRemovableActivations``), so the graph keeps the FP32 graph's
            operators and TensorRT fuses Conv+ReLU itself.
        dedicated_qdq_pair: one Q/DQ pair per consumer (``DedicatedQDQPair``).

    Returns:
        The calibration record for the manifest (method, tensors, cache hit, key).

    Raises:
        EdgekitError: a calibration batch of the wrong shape, or a failed quantization.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgekit.backends.base import onnx_io
    from edgekit.calibration import (
        CalibrationCache,
        cache_key,
        check_batch,
        collect_ranges,
        device_batches,
        hash_array,
        to_numpy,
    )

    io = onnx_io(onnx_path)
    check_batch(calib_x, io["input_shape"])
    t0 = time.perf_counter()
    settings = {"method": method, "percentile": percentile, "tool": "edgekit-qdq/1"}
    key = cache_key(sha256_file(onnx_path), hash_array(calib_x), settings)
    cache = CalibrationCache(cache_dir) if cache_dir else None
    pre = Path(out_path).with_name(Path(out_path).stem + ".pre.onnx")
    preprocess_onnx(onnx_path, pre)
    try:
        ranges = cache.load_ranges(key) if cache else None
        hit = ranges is not None
        batches, dev = device_batches(calib_x, batch, device, io["input_shape"])
        if ranges is None:
            ranges = collect_ranges(pre, batches, method=method, percentile=percentile)
            if cache:
                cache.save_ranges(key, ranges, {"onnx": str(onnx_path), **settings})
        if log:
            log(f"calibration: {len(ranges)} tensors, {method}, {'cache hit' if hit else dev}")
        names = {v.name for v in onnx.load(str(pre), load_external_data=False).graph.value_info}
        names |= {i.name for i in onnx.load(str(pre), load_external_data=False).graph.input}
        names |= {o.name for o in onnx.load(str(pre), load_external_data=False).graph.output}
        overrides = {
            n: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
            for n, (lo, hi) in ranges.items()
            if n in names
        }
        # ORT still runs its own (MinMax) calibration pass; every activation it
        # calibrates is overridden by edgekit's ranges, so one batch suffices.
        reader = _Reader(io["input"], [to_numpy(batches[0])])
        logging.getLogger().setLevel(logging.ERROR)
        try:
            quantize_static(
                str(pre),
                str(out_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QDQKeepRemovableActivations": keep_removable_activations,
                    "DedicatedQDQPair": dedicated_qdq_pair,
                    "TensorQuantOverrides": overrides,
                },
            )
        except Exception as e:  # ORT raises bare ValueErrors/RuntimeErrors
            raise EdgekitError(f"Q/DQ quantization failed: {e}") from None
    finally:
        pre.unlink(missing_ok=True)
    return {
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "tensors": len(ranges),
        "batch": batch,
        "device": dev,
        "cache_key": key,
        "cache_hit": hit,
        "scheme": "symmetric int8, per-channel weights, per-tensor activations, zero point 0",
        "tool": "onnxruntime.quantization.quantize_static (QDQ)",
        "seconds": round(time.perf_counter() - t0, 2),
    }


def overflowing_nodes(onnx_path: Path, x: np.ndarray, limit: float = FP16_MAX / 2) -> list[str]:
    """Nodes whose FP32 outputs on ``x`` exceed ``limit`` in magnitude (kept FP32 in FP16).

    The limit is half the FP16 maximum: a margin for images beyond the sample.
    """
    import onnx
    import onnxruntime as ort

    from edgekit.calibration import augment_outputs

    m = onnx.load(str(onnx_path))
    out_of = {o: n.name for n in m.graph.node for o in n.output if o}
    aug = augment_outputs(onnx_path, list(out_of))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(aug.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs() if o.name in out_of]
    vals = sess.run(names, {sess.get_inputs()[0].name: x})
    return sorted(
        {
            out_of[n]
            for n, v in zip(names, vals, strict=True)
            if v.dtype == np.float32 and v.size and float(np.abs(v).max()) > limit
        }
    )


def make_fp16_onnx(
    onnx_path: Path,
    out_path: Path,
    sample_x: np.ndarray | None = None,
    op_block_list: list[str] | tuple[str, ...] = FP16_OP_BLOCK,
    node_block_list: list[str] | None = None,
) -> dict:
    """Write an FP16 ONNX with FP32 inputs/outputs (``keep_io_types=True``).

    Nodes whose activations on ``sample_x`` overflow FP16 (see
    :func:`overflowing_nodes`) and ops in ``op_block_list`` stay FP32; Cast nodes
    are inserted at the boundaries by the converter.

    Returns:
        A record for the manifest: the blocked ops and nodes.
    """
    import onnx
    from onnxconverter_common import float16

    nodes = list(node_block_list or [])
    if sample_x is not None:
        nodes += overflowing_nodes(onnx_path, sample_x)
    m = onnx.load(str(onnx_path))
    m16 = float16.convert_float_to_float16(
        m,
        keep_io_types=True,
        op_block_list=list(op_block_list),
        node_block_list=sorted(set(nodes)) or None,
    )
    onnx.save(m16, str(out_path))
    return {
        "tool": "onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)",
        "op_block_list": list(op_block_list),
        "fp32_nodes": sorted(set(nodes)),
    }
