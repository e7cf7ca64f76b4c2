"""ONNX Runtime backend: ``ort-cpu`` (FP32), ``ort-cpu-int8`` (static INT8) and the GPU
targets ``ort-cuda`` (FP32, CUDA EP), ``ort-cuda-fp16`` (an FP16 ONNX on the CUDA EP)
and ``ort-trt`` (ONNX Runtime's TensorRT EP).

The runner needs only ``onnxruntime`` and NumPy, so it works in the runtime
install on a device. Sessions use the execution provider recorded in the
manifest, sequential execution and ``--threads`` intra-op threads (see the
ONNX Runtime docs, "Thread management").

INT8 follows the ONNX Runtime docs, "Quantize ONNX models" (static
quantization): ``quant_pre_process`` (symbolic shape inference + graph
optimization), then ``quantize_static`` fed by a class-balanced calibration set
through a ``CalibrationDataReader``.
"""

from __future__ import annotations

import contextlib
import io as io_mod
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgekit.backends.base import Backend, BuildContext, BuildResult, is_installed, onnx_io
from edgekit.errors import EdgekitError
from edgekit.manifest import artifact_path
from edgekit.schema import Bool, Choice, Int, ListOf, Num, Str

ARTIFACT = "model.onnx"

#: Op types that only move or reshape data: they need no quantization of their own.
NEUTRAL_OPS = frozenset(
    {
        "Shape", "Constant", "ConstantOfShape", "Identity", "Reshape", "Flatten", "Squeeze",
        "Unsqueeze", "Gather", "Transpose", "Slice", "Concat", "Cast", "Range", "Expand",
        "Split", "Pad", "Dropout",
    }
)  # fmt: skip

INT8_DEFAULTS = {
    "execution_provider": "CPUExecutionProvider",
    "quant_format": "QDQ",
    "per_channel": True,
    "calibration_method": "minmax",
    "calib_per_class": 32,
    "calib_batch": 32,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    # 7-bit weights: no int8 weight pair can saturate vpmaddubsw's int16 sums on x86
    # CPUs without VNNI (issue 18; benchmarks/int8_isa.py, docs/targets.md)
    "reduce_range": True,
    "percentile": 99.999,
    "nodes_to_exclude": [],
    "op_types_to_quantize": [],
    "unsupported_ops": "fp32",
    "strip_names": True,
    # pad a 3-channel input to 4 so the stem conv takes MLAS's symmetric INT8 kernel
    # (edgekit/channel_pad.py; QDQ only)
    "pad_input_channels": True,
    # issue 18 (ISA-robust INT8): symmetric activations and quant_pre_process's graph
    # optimization, exposed for the defaults sweep (benchmarks/int8_isa.py)
    "activation_symmetric": False,
    "pre_process_optimize": True,
    # calibration_method = "auto": size of the held-out training slice that scores it
    "auto_images": 1000,
    # accuracy control (edgekit/sensitivity.py): None = plain INT8
    "max_drop": None,
    "validation_images": 0,
}

#: The execution providers whose sessions run on the GPU runner (edgekit/backends/gpu.py).
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

#: Type, allowed values and range of every option (see docs/targets.md).
OPTION_SPECS = {
    "execution_provider": Str(r"[A-Za-z][A-Za-z0-9]*ExecutionProvider"),
    "cuda_graph": Bool(),
    "quant_format": Choice("QDQ", "QOperator"),
    "per_channel": Bool(),
    "calibration_method": Choice("minmax", "entropy", "percentile", "auto"),
    "auto_images": Int(min=1, max=1_000_000),
    "calib_per_class": Int(min=1, max=100_000),
    "calib_batch": Int(min=1, max=65_536),
    "activation_type": Choice("QUInt8", "QInt8"),
    "weight_type": Choice("QUInt8", "QInt8"),
    "reduce_range": Bool(),
    "percentile": Num(min=0, max=100, exclusive_min=True),
    "nodes_to_exclude": ListOf(Str()),
    "op_types_to_quantize": ListOf(Str(r"[A-Za-z][A-Za-z0-9_]*")),
    "unsupported_ops": Choice("fp32", "error"),
    "strip_names": Bool(),
    "pad_input_channels": Bool(),
    "activation_symmetric": Bool(),
    "pre_process_optimize": Bool(),
    "max_drop": Num(min=0, max=100, nullable=True),
    "validation_images": Int(min=0, max=10_000_000),
}


class OrtRunner:
    """An ``onnxruntime.InferenceSession`` behind the :class:`Runner` protocol."""

    def __init__(self, path: Path, manifest: dict, threads: int | None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = int(threads or 0)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        provider = manifest.get("options", {}).get("execution_provider", "CPUExecutionProvider")
        if provider not in ort.get_available_providers():
            raise EdgekitError(
                f"execution provider {provider} is not available in this onnxruntime "
                f"(it has {', '.join(ort.get_available_providers())})",
                "install edgekit-toolchain[gpu] for CUDAExecutionProvider",
            )
        try:
            self.session = ort.InferenceSession(str(path), so, providers=[provider])
        except Exception as e:
            raise load_error(path, e, manifest, ort.__version__) from None
        self.input = manifest["io"]["input"]
        self.device = "cuda" if provider.startswith(("CUDA", "Tensorrt")) else "cpu"
        b = manifest["io"].get("batch")
        self.batch_range = (b["min"], b["max"]) if b else (1, None)
        self.provider = provider

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]

    def close(self) -> None:
        self.session = None


def _release(v: str) -> tuple[int, ...]:
    import re

    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def load_error(path, err: Exception, manifest: dict, installed: str) -> EdgekitError:
    """The error for an artifact ONNX Runtime refused to load.

    When the manifest says the artifact was built with a newer onnxruntime than the
    one here (a device behind the build host: an opset or IR version it does not
    know), the message names both versions.
    """
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    versions = manifest.get("versions") or {}
    built = versions.get("onnxruntime") or versions.get("onnxruntime-gpu")
    if built and _release(built) > _release(installed):
        return EdgekitError(
            f"ONNX Runtime {installed} cannot load {path}, built with onnxruntime {built}: {first}",
            f"install onnxruntime>={'.'.join(map(str, _release(built)[:2]))} here, or rebuild "
            "the artifact with a lower --opset for this device",
        )
    return EdgekitError(f"ONNX Runtime cannot load {path}: {first}")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    packages = ("onnxruntime",)
    install_hint = "pip install 'edgekit-toolchain[cpu]'"
    option_defaults = {
        "fp32": {"execution_provider": "CPUExecutionProvider", "cuda_graph": False},
        # an FP16 ONNX (FP32 inputs/outputs) from edgekit.qdq.make_fp16_onnx, as trt-fp16's
        "fp16": {"execution_provider": "CUDAExecutionProvider", "cuda_graph": False},
        "int8": INT8_DEFAULTS,
    }
    option_specs = OPTION_SPECS
    value_aliases = {
        "calibration_method": {"MinMax": "minmax", "Entropy": "entropy", "Percentile": "percentile"}
    }

    def resolve_options(self, precision: str, options, where: str = "", warn: bool = True) -> dict:
        """As :meth:`Backend.resolve_options`, and ``cuda_graph`` only with the CUDA EP.

        Raises:
            EdgekitError: also ``cuda_graph = true`` with another execution provider, and
                ``max_drop`` with ``calibration_method = "auto"``.
        """
        opts = super().resolve_options(precision, options, where, warn)
        if opts.get("max_drop") is not None and opts.get("calibration_method") == "auto":
            raise EdgekitError(
                f'{where}: max_drop and calibration_method = "auto" cannot be combined: the '
                "fallback compares variants of one calibration",
                'set calibration_method to "minmax", "percentile" or "entropy"',
            )
        if opts.get("cuda_graph") and opts["execution_provider"] != "CUDAExecutionProvider":
            raise EdgekitError(
                f"{where}: cuda_graph = true needs execution_provider = "
                f'"CUDAExecutionProvider", not {opts["execution_provider"]!r}',
                "remove cuda_graph or use the CUDA execution provider",
            )
        if opts["execution_provider"] != "CUDAExecutionProvider":
            # only the CUDA EP has it: an ort-cpu manifest stays readable by an older
            # edgekit on the device, which does not know the option
            opts.pop("cuda_graph", None)
        return opts

    def unavailable_reason(self, target) -> str | None:
        reason = super().unavailable_reason(target)
        if reason:
            return reason
        import onnxruntime as ort

        ep = target.options.get("execution_provider", "CPUExecutionProvider")
        if target.precision == "fp16" and not is_installed("onnxconverter_common"):
            return (
                "onnxconverter-common not installed (it writes the FP16 ONNX; "
                "pip install 'edgekit-toolchain[build]')"
            )
        if ep == "TensorrtExecutionProvider":
            return ort_trt_unavailable_reason(target)
        if ep in GPU_PROVIDERS and target.requires.get("device") == "cuda":
            from edgekit.calibration import cuda_available

            if not cuda_available():
                return (
                    "needs a CUDA GPU and CuPy (none found; pip install 'edgekit-toolchain[gpu]')"
                )
        if ep not in ort.get_available_providers():
            return f"{ep} not in this onnxruntime (pip install 'edgekit-toolchain[gpu]' on a CUDA machine)"
        return None

    def build(self, ctx: BuildContext, target, out_dir: Path) -> BuildResult:
        if ctx.onnx_path is None:
            raise EdgekitError(
                "ONNX Runtime targets are built from an ONNX file",
                "run edgekit export first and pass --onnx",
            )
        if target.precision == "int8" and target.options.get("max_drop") is not None:
            from edgekit.sensitivity import build_with_max_drop

            return build_with_max_drop(ctx, target.options, out_dir, target.name, build_int8)
        if target.precision == "int8":
            return build_int8(ctx, target.options, out_dir, where=target.name)
        if target.precision == "fp16":
            return build_fp16(ctx, out_dir)
        shutil.copyfile(ctx.onnx_path, out_dir / ARTIFACT)
        return BuildResult(artifact=ARTIFACT, io=onnx_io(out_dir / ARTIFACT))

    def sensitivity(self, ctx: BuildContext, target, images: int, log) -> dict:
        """Per-node INT8 sensitivity (:func:`edgekit.sensitivity.sensitivity_report`)."""
        from edgekit.sensitivity import sensitivity_report

        if target.options.get("calibration_method") == "auto":
            raise EdgekitError(
                f'{target.name}: sensitivity is measured for one calibration, not "auto"',
                'set calibration_method to "minmax", "percentile" or "entropy" in the target file',
            )
        return sensitivity_report(ctx, target.options, target.name, build_int8, images, log)

    def verify_artifact(self, artifact_dir: Path, manifest: dict) -> None:
        """Bind ``precision: int8`` to the hashed model: it must hold quantized operators.

        An FP32 ``model.onnx`` relabelled ``int8`` in its manifest would otherwise be
        reported as an INT8 row. The operator names (``QuantizeLinear``,
        ``DequantizeLinear``, ``QLinearConv``, ``ConvInteger``, ...) are plain strings in
        the protobuf, so no onnx package is needed (the runtime install has none).

        Raises:
            EdgekitError: an ``int8`` manifest whose model has no quantized operator.
        """
        if manifest["precision"] != "int8":
            return
        data = artifact_path(artifact_dir, manifest).read_bytes()
        if not any(op in data for op in (b"QuantizeLinear", b"QLinear", b"Integer")):
            raise EdgekitError(
                f"{artifact_dir}: the manifest says precision int8 but "
                f"{manifest['artifact']} has no quantized operator; the manifest does not "
                "belong to this model",
                "rebuild the artifact with edgekit build --force",
            )

    def load(self, artifact_dir: Path, manifest: dict, threads: int | None) -> OrtRunner:
        if manifest.get("options", {}).get("execution_provider") in GPU_PROVIDERS:
            from edgekit.backends.gpu import ort_cuda_runner  # CuPy buffers, IOBinding

            return ort_cuda_runner(artifact_path(artifact_dir, manifest), manifest, threads)
        warn_isa(manifest)
        return OrtRunner(artifact_path(artifact_dir, manifest), manifest, threads)


def warn_isa(manifest: dict) -> str | None:
    """Print a warning (stderr) when this CPU lacks the instruction the artifact relies on.

    :func:`edgekit.isa.isa_problem`: a U8S8 artifact whose weights can saturate int16
    without VNNI, loaded on an x86 CPU without VNNI. Returns the warning (None if none).
    """
    import sys

    from edgekit.isa import isa_problem

    problem = isa_problem(manifest)
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    return problem


def ort_trt_unavailable_reason(target) -> str | None:
    """Everything ``ort-trt`` misses here, in one reason; None when it can run.

    It needs a CUDA GPU with CuPy (the GPU runner), onnxruntime-gpu's
    ``TensorrtExecutionProvider``, and TensorRT's own libraries, which ONNX Runtime
    loads when the session starts (they are not part of onnxruntime-gpu).
    """
    import onnxruntime as ort

    from edgekit.calibration import cuda_available

    missing = []
    if target.requires.get("device") == "cuda" and not cuda_available():
        missing.append("a CUDA GPU and CuPy (none found)")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        missing.append("onnxruntime-gpu's TensorrtExecutionProvider (not in this onnxruntime)")
    if not tensorrt_libraries_found():
        missing.append("TensorRT's libraries (libnvinfer not found)")
    if not missing:
        return None
    return (
        f"needs {'; '.join(missing)} (pip install 'edgekit-toolchain[gpu]' on a CUDA "
        "machine; TensorRT from JetPack or NVIDIA's index)"
    )


def tensorrt_libraries_found() -> bool:
    """Whether TensorRT's runtime library can be found (nothing is loaded).

    Looks for the ``tensorrt``/``tensorrt_libs`` Python packages (NVIDIA's wheels) and
    for ``libnvinfer`` on the library path (JetPack's packages).
    """
    import ctypes.util

    return any(is_installed(m) for m in ("tensorrt_libs", "tensorrt")) or bool(
        ctypes.util.find_library("nvinfer")
    )


def build_fp16(ctx: BuildContext, out_dir: Path) -> BuildResult:
    """The FP16 ONNX of ``ctx.onnx_path`` (FP32 inputs/outputs), as ``trt-fp16`` makes it.

    :func:`edgekit.qdq.make_fp16_onnx`: onnxconverter-common's float16 converter with
    ``keep_io_types=True``; nodes whose activations overflow FP16 on four calibration
    images per class stay FP32.

    Returns:
        BuildResult with the converter's record in ``extra["quantization"]["fp16"]``.
    """
    from edgekit.qdq import make_fp16_onnx

    sample = ctx.preprocess and ctx.calib_split is not None
    x = ctx.calibration_set(4)[0] if sample else None
    rec = make_fp16_onnx(ctx.onnx_path, out_dir / ARTIFACT, x)
    # recorded under "quantization": the manifest's record of how the weights were reduced
    return BuildResult(
        artifact=ARTIFACT, io=onnx_io(out_dir / ARTIFACT), extra={"quantization": {"fp16": rec}}
    )


def _choice(opts: dict, key: str, allowed: dict, where: str):
    v = opts[key]
    if v not in allowed:
        raise EdgekitError(
            f"{where}: option {key} = {v!r} is not one of {', '.join(allowed)}",
            "fix the target file",
        )
    return allowed[v]


def check_int8_options(opts: dict, where: str) -> dict:
    """Map the target's INT8 options to ``onnxruntime.quantization`` values.

    Raises:
        EdgekitError: a value outside its allowed set.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    out = {
        "quant_format": _choice(
            opts,
            "quant_format",
            {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator},
            where,
        ),
        "calibrate_method": _choice(
            opts,
            "calibration_method",
            {
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
                "auto": None,  # each of AUTO_METHODS in turn (choose_calibration)
            },
            where,
        ),
        "activation_type": _choice(
            opts, "activation_type", {"QUInt8": QuantType.QUInt8, "QInt8": QuantType.QInt8}, where
        ),
        "weight_type": _choice(
            opts, "weight_type", {"QUInt8": QuantType.QUInt8, "QInt8": QuantType.QInt8}, where
        ),
    }
    _choice(opts, "unsupported_ops", {"fp32": 0, "error": 0}, where)
    for key in ("calib_per_class", "calib_batch"):
        if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < 1:
            raise EdgekitError(
                f"{where}: option {key} must be a positive integer, got {opts[key]!r}"
            )
    for key in ("nodes_to_exclude", "op_types_to_quantize"):
        if not isinstance(opts[key], list) or not all(isinstance(n, str) for n in opts[key]):
            raise EdgekitError(f"{where}: option {key} must be a list of strings")
    return out


def strip_names(path: Path) -> None:
    """Shrink an ONNX file in place: drop node names, doc strings and ``value_info``,
    and rename internal tensors to short ids (graph inputs/outputs keep their names).

    The computation is unchanged; only debugging names go. On a small model
    (ResNet-20, 0.27 M parameters) the QDQ graph's long names are ~7% of the file.
    """
    import onnx

    m = onnx.load(str(path))
    g = m.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def short(x: str) -> str:
        if not x or x in keep:
            return x
        return names.setdefault(x, f"t{len(names)}")

    for t in g.initializer:
        t.name = short(t.name)
    for n in g.node:
        n.name, n.doc_string = "", ""
        for i, x in enumerate(n.input):
            n.input[i] = short(x)
        for i, x in enumerate(n.output):
            n.output[i] = short(x)
    del g.value_info[:]
    onnx.save(m, str(path))


def unquantizable_nodes(model, op_types: set[str]) -> list[tuple[str, str]]:
    """``(node name, op type)`` of compute nodes ONNX Runtime will leave in FP32."""
    return [
        (n.name, n.op_type)
        for n in model.graph.node
        if n.op_type not in op_types and n.op_type not in NEUTRAL_OPS
    ]


def build_int8(
    ctx: BuildContext,
    opts: dict,
    out_dir: Path,
    where: str = "ort-cpu-int8",
    calib_cache: Path | None = None,
):
    """Static INT8 quantization of ``ctx.onnx_path`` into ``out_dir/model.onnx``.

    Steps (ONNX Runtime docs, "Quantize ONNX models"): ``quant_pre_process``;
    a class-balanced calibration set of ``calib_per_class`` images per class
    from the training split, fed in batches of ``calib_batch`` (or the model's
    fixed batch); ``quantize_static`` with the target's format, calibration
    method, per-channel flag and activation/weight types (U8S8 by default:
    VNNI's native u8 x s8 form). Nodes listed in ``nodes_to_exclude`` stay FP32.
    ``calibration_method = "auto"`` builds each of :data:`AUTO_METHODS` and keeps
    the smallest top-1 drop on a held-out training slice (:func:`choose_calibration`).
    ``calib_cache``: ONNX Runtime's calibration cache file (``calibration_cache_path``),
    written by the first call and read by later ones (the accuracy-control variants).

    Returns:
        BuildResult with the calibration record (with ``auto``: the choice, each
        candidate's drop and the slice), in ``extra["quantization"]`` the FP32 nodes
        left in the graph, and in ``extra["isa"]`` the CPU assumption
        (:func:`edgekit.isa.isa_record`: can a weight pair saturate int16 without VNNI).

    Raises:
        EdgekitError: bad option values, too few calibration images, a node name
            in ``nodes_to_exclude`` that the model does not have, ops that cannot
            be quantized while ``unsupported_ops = "error"``, or a failure inside
            ONNX Runtime's quantizer (with the node to exclude when known).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        quantize_static,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from edgekit.qdq import quant_pre_process_checked

    mapped = check_int8_options(opts, where)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    x, _, calib = ctx.calibration_for(where, opts["calib_per_class"])
    io = onnx_io(ctx.onnx_path)
    fixed = io["batch"]["max"] if io["batch"] else None
    # equal batches: ORT's histogram calibrators (Percentile, Entropy) stack the batches'
    # outputs and fail on a shorter last one, so take the largest divisor of the count
    bs = fixed or max(d for d in range(1, min(opts["calib_batch"], len(x)) + 1) if len(x) % d == 0)

    class Reader(CalibrationDataReader):
        """Yields ``{input: float32 [bs, C, H, W]}`` batches of the calibration set."""

        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            xb = x[self.i : self.i + bs]
            self.i += bs
            if len(xb) < bs and fixed:  # pad a static-batch model's last batch
                xb = np.concatenate([xb, np.repeat(xb[-1:], bs - len(xb), axis=0)])
            return {io["input"]: np.ascontiguousarray(xb, dtype=np.float32)}

        def rewind(self):
            self.i = 0

    with tempfile.TemporaryDirectory(prefix="edgekit-ortq-") as td:
        pre = quant_pre_process_checked(
            ctx.onnx_path, Path(td) / "pre.onnx", optimize=opts["pre_process_optimize"], where=where
        )
        model = onnx.load(str(pre))
        names = {n.name for n in model.graph.node}
        bad = [n for n in opts["nodes_to_exclude"] if n not in names]
        if bad:
            raise EdgekitError(
                f"{where}: nodes_to_exclude names node(s) not in the model: {', '.join(bad)}",
                f"node names after quant_pre_process include {', '.join(sorted(names)[:8])} ...",
            )
        op_types = set(opts["op_types_to_quantize"]) or (set(QDQRegistry) | set(QLinearOpsRegistry))
        fp32 = [
            (n, t)
            for n, t in unquantizable_nodes(model, op_types)
            if n not in opts["nodes_to_exclude"]
        ]
        if fp32 and opts["unsupported_ops"] == "error":
            kinds = sorted({t for _, t in fp32})
            raise EdgekitError(
                f"{where}: ONNX Runtime cannot quantize op type(s) {', '.join(kinds)} "
                f"({len(fp32)} node(s), e.g. {fp32[0][0]})",
                'set unsupported_ops = "fp32" in the target file to keep those nodes in FP32',
            )
        extra_options = {
            "CalibPercentile": float(opts["percentile"]),
            "ActivationSymmetric": bool(opts["activation_symmetric"]),
        }

        auto_mode = opts["calibration_method"] == "auto"

        def quantize(method: str, dest: Path) -> None:
            mapped["calibrate_method"] = methods[method]
            try:
                # Entropy/Percentile calibrators print progress to stdout: keep it off the CLI.
                with contextlib.redirect_stdout(io_mod.StringIO()):
                    quantize_static(
                        str(pre),
                        str(dest),
                        Reader(),
                        per_channel=bool(opts["per_channel"]),
                        reduce_range=bool(opts["reduce_range"]),
                        nodes_to_exclude=list(opts["nodes_to_exclude"]) or None,
                        op_types_to_quantize=list(opts["op_types_to_quantize"]) or None,
                        extra_options=extra_options,
                        # one calibration for every accuracy-control variant; never with
                        # auto, whose candidates differ by their calibration
                        calibration_cache_path=str(calib_cache)
                        if calib_cache and not auto_mode
                        else None,
                        **mapped,
                    )
            except EdgekitError:
                raise
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise EdgekitError(
                    f"{where}: ONNX Runtime's quantizer failed: {first}",
                    "keep the offending node in FP32 with nodes_to_exclude = [...] in the "
                    "target file",
                ) from None

        auto = None
        if auto_mode:
            auto = choose_calibration(ctx, opts, pre, Path(td), quantize, where)
            shutil.copyfile(Path(td) / f"auto-{auto['chosen']}.onnx", out_dir / ARTIFACT)
        else:
            quantize(opts["calibration_method"], out_dir / ARTIFACT)
    channel_pad = None
    if opts["pad_input_channels"] and opts["quant_format"] == "QDQ":
        from edgekit.channel_pad import pad_input_channels

        channel_pad = pad_input_channels(out_dir / ARTIFACT)
    if opts["strip_names"]:
        strip_names(out_dir / ARTIFACT)
    calib["method"] = auto["chosen"] if auto else opts["calibration_method"]
    calib["batch"] = bs
    if auto:
        calib["auto"] = auto
    quant = {
        "tool": "onnxruntime.quantization.quantize_static",
        "pre_process": "quant_pre_process",
        "fp32_nodes": sorted({n for n, _ in fp32} | set(opts["nodes_to_exclude"])),
        "fp32_op_types": sorted({t for _, t in fp32}),
    }
    if channel_pad is not None:
        quant["input_channel_pad"] = channel_pad
    from edgekit.isa import isa_record
    from edgekit.saturation import risky_weight_pairs

    risky = risky_weight_pairs(out_dir / ARTIFACT)["risky"]
    return BuildResult(
        artifact=ARTIFACT,
        io=onnx_io(out_dir / ARTIFACT),
        calibration=calib,
        extra={"quantization": quant, "isa": isa_record(opts, risky)},
    )


#: The candidates of ``calibration_method = "auto"``, cheapest first (a tie keeps the first).
AUTO_METHODS = ("minmax", "percentile", "entropy")


def choose_calibration(ctx: BuildContext, opts: dict, pre: Path, tmp: Path, quantize, where: str):
    """``calibration_method = "auto"``: quantize with each of :data:`AUTO_METHODS` and
    keep the one with the smallest top-1 drop on a held-out slice of the training split.

    The slice (``auto_images`` images, class-balanced) is disjoint from the calibration
    images (:meth:`BuildContext.validation_set`); the test split is never used. Top-1 is
    measured with ONNX Runtime on this machine, FP32 (the pre-processed model) and INT8.

    Returns:
        ``{"chosen", "fp32_top1", "candidates": {method: {"top1", "drop"}}, "slice"}``
        (top-1 in %, drop = FP32 - INT8 in points); ``tmp/auto-METHOD.onnx`` holds each
        candidate.

    Raises:
        EdgekitError: a slice too small to resolve the drops (fewer than 10 images per
            class), or a training split without enough images left after calibration,
            with the images per class needed.
    """
    import onnxruntime as ort

    from edgekit.data import min_images_for_drop

    n_cls = len(ctx.classes)
    images = int(opts["auto_images"])
    floor = max(10 * n_cls, min_images_for_drop(1.0))
    if images < floor:
        raise EdgekitError(
            f'{where}: calibration_method = "auto" needs a held-out slice of at least '
            f"{floor} images ({-(-floor // n_cls)} per class for {n_cls} classes) to tell "
            f"the candidates apart; auto_images = {images}",
            f"set auto_images >= {floor} (1,000 resolves 0.1 point)",
        )
    try:
        xv, yv, rec = ctx.validation_set(images, opts["calib_per_class"])
    except EdgekitError as e:
        raise EdgekitError(
            f'{where}: calibration_method = "auto" needs {images} held-out training '
            f"images ({-(-images // n_cls)} per class) besides the "
            f"{opts['calib_per_class']} per class used to calibrate: {e.message}",
            "lower auto_images or calib_per_class in the target file, or give a dataset "
            "with more training images",
        ) from None

    def top1(path) -> float:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        shape0 = s.get_inputs()[0].shape[0]
        bs = shape0 if isinstance(shape0, int) and shape0 > 0 else 100
        hits = 0
        for i in range(0, len(xv), bs):
            xb = np.ascontiguousarray(xv[i : i + bs], dtype=np.float32)
            n = len(xb)
            if n < bs and isinstance(shape0, int) and shape0 > 0:
                xb = np.concatenate([xb, np.repeat(xb[-1:], bs - n, axis=0)])
            hits += int((s.run(None, {name: xb})[0][:n].argmax(1) == yv[i : i + n]).sum())
        return 100.0 * hits / len(yv)

    fp32 = top1(pre)
    cands = {}
    for method in AUTO_METHODS:
        path = tmp / f"auto-{method}.onnx"
        quantize(method, path)
        t = top1(path)
        cands[method] = {"top1": round(t, 4), "drop": round(fp32 - t, 4)}
    chosen = min(AUTO_METHODS, key=lambda m: cands[m]["drop"])  # min keeps the first of ties
    return {"chosen": chosen, "fp32_top1": round(fp32, 4), "candidates": cands, "slice": rec}


BACKEND = OnnxRuntimeBackend()
