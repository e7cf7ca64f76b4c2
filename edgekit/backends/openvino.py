"""OpenVINO backend: ``ov-cpu`` (FP32 IR) and ``ov-cpu-int8`` (NNCF post-training INT8).

The builder converts the exported ONNX with ``openvino.convert_model`` and saves an
OpenVINO IR (``model.xml`` topology + ``model.bin`` weights, both hashed in the
manifest). INT8 is NNCF's post-training quantization (``nncf.quantize``, NNCF docs,
"Post-training Quantization"; the algorithm is MinMax range estimation, global min/max
of the activations by default, with full bias correction) fed by the same
class-balanced calibration images as every other INT8 target
(:meth:`BuildContext.calibration_for`), dealt out one class at a time so that the
prefix NNCF's bias correction reads is class-balanced too; it inserts ``FakeQuantize``
nodes that OpenVINO's CPU plugin runs as INT8 kernels. The defaults were chosen by
``benchmarks/ov_defaults.py`` (worst drop over several models).

The runner needs only the ``openvino`` package and NumPy (no torch, no NNCF), so it
works in the device install. It compiles the IR for the CPU plugin with OpenVINO's
own performance hints (OpenVINO docs, "High-level Performance Hints"):
``PERFORMANCE_HINT`` (LATENCY or THROUGHPUT), ``NUM_STREAMS`` and
``INFERENCE_NUM_THREADS`` (and ``ENABLE_CPU_PINNING``, thread affinity); the
harness's ``--threads`` overrides ``inference_num_threads``. ``INFERENCE_PRECISION_HINT`` is ``f32`` by default so a
CPU with bf16/AMX does not silently run FP32 layers in bf16.

An IR written by a newer OpenVINO than the one installed (its ``Runtime_version`` in
the IR, or the manifest's ``versions.openvino``) is refused at load with both
versions named; so is an IR OpenVINO cannot parse.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

from edgekit.backends.base import Backend, BuildContext, BuildResult, onnx_io
from edgekit.errors import EdgekitError
from edgekit.manifest import artifact_path
from edgekit.schema import Bool, Choice, Int

ARTIFACT = "model.xml"
WEIGHTS = "model.bin"
INSTALL = "pip install 'edgekit-toolchain[openvino]'"

RUNTIME_DEFAULTS = {
    "performance_hint": "LATENCY",
    "num_streams": 1,
    "inference_num_threads": 0,
    "inference_precision": "f32",
    "cpu_pinning": "default",
}
INT8_DEFAULTS = {
    **RUNTIME_DEFAULTS,
    "preset": "performance",
    "calib_per_class": 32,
    # full bias correction: measured better than NNCF's fast one on all three models of
    # issue 18 (digits 96.44 vs 94.89, FP32 96.89; ResNet-20 91.70 vs 91.63, FP32 91.73;
    # ResNet-18 94.73 vs 94.68, FP32 94.76), at 13 s to build ResNet-18 here
    "fast_bias_correction": False,
    "overflow_fix": "first_layer_only",
    # the order the calibration images reach NNCF: its full bias correction reads only
    # the first 20% of them, which in edgekit's class-grouped order are classes 0-1 only
    "calib_order": "interleaved",
    # global min/max of per-tensor activations, not NNCF's mean of per-image min/max:
    # worst drop 0.44 against 0.67 (0.89 with class-grouped images) over 11 digits
    # models and the shared ResNet-20/18, and 101 against 134 test images whose class
    # differs from FP32 on the ResNets (benchmarks/ov_defaults.py, AVX-512 VNNI)
    "activation_range": "minmax",
}
OPTION_SPECS = {
    "performance_hint": Choice("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"),
    # 0 = let the hint decide (OpenVINO's AUTO)
    "num_streams": Int(min=0, max=1024),
    # 0 = OpenVINO's default (all physical cores); --threads overrides it
    "inference_num_threads": Int(min=0, max=4096),
    "inference_precision": Choice("f32", "bf16", "f16", "default"),
    # ENABLE_CPU_PINNING: "default" leaves it to the hint (on for LATENCY on Linux)
    "cpu_pinning": Choice("default", "on", "off"),
    "preset": Choice("performance", "mixed"),
    "calib_per_class": Int(min=1, max=100_000),
    "fast_bias_correction": Bool(),
    "overflow_fix": Choice("enable", "first_layer_only", "disable"),
    "calib_order": Choice("interleaved", "by_class"),
    "activation_range": Choice("mean_minmax", "minmax"),
}
#: Operator types whose FP32 execution makes an INT8 model slow: the manifest lists
#: those left without a ``FakeQuantize`` on their data input.
COMPUTE_OPS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")
#: Operators that only move data: a quantized input stays quantized through them.
SHAPE_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat")


def _release(v: str) -> tuple[int, ...]:
    """``"2026.4.1-22982-e213a14..."`` -> ``(2026, 4, 1)``."""
    return tuple(int(x) for x in re.findall(r"\d+", v.split("-")[0].split("+")[0])[:3])


def ir_runtime_version(xml: Path) -> str | None:
    """The ``Runtime_version`` an IR was saved with (its ``<rt_info>``), read as text.

    Returns:
        The version string, or None when the IR does not record one.
    """
    try:
        with open(xml, "rb") as f:
            head = f.read()[-65536:]  # rt_info is written after the layers and edges
    except OSError:
        return None
    m = re.search(rb'<Runtime_version\s+value="([^"]{1,100})"', head)
    return m.group(1).decode("ascii", "replace") if m else None


def newer_ir_problem(xml: Path, manifest: dict, installed: str) -> EdgekitError | None:
    """The refusal of an IR from a newer OpenVINO than ``installed``; None when it may load.

    Both the IR's own ``Runtime_version`` and the manifest's ``versions.openvino`` are
    compared (release numbers only) against the installed ``openvino``: an older
    runtime may not know the newer operator-set versions, or misread them.
    """
    for what, v in (
        ("the IR was saved by", ir_runtime_version(xml)),
        ("the manifest says it was built with", (manifest.get("versions") or {}).get("openvino")),
    ):
        if v and _release(v) and _release(v) > _release(installed):
            return EdgekitError(
                f"cannot load {xml}: {what} OpenVINO {v.split('-')[0]}, newer than the "
                f"installed {installed.split('-')[0]}",
                f"install openvino>={'.'.join(map(str, _release(v)[:2]))} here, or rebuild "
                "the artifact with this OpenVINO",
            )
    return None


def compile_config(opts: dict, threads: int | None) -> dict:
    """The CPU plugin properties for the target options and the harness's ``--threads``."""
    cfg = {"PERFORMANCE_HINT": opts.get("performance_hint", "LATENCY")}
    if opts.get("num_streams", 1):
        cfg["NUM_STREAMS"] = int(opts.get("num_streams", 1))
    n = int(threads or opts.get("inference_num_threads", 0) or 0)
    if n:
        cfg["INFERENCE_NUM_THREADS"] = n
    precision = opts.get("inference_precision", "f32")
    if precision != "default":
        cfg["INFERENCE_PRECISION_HINT"] = precision
    pinning = opts.get("cpu_pinning", "default")
    if pinning != "default":
        cfg["ENABLE_CPU_PINNING"] = pinning == "on"
    return cfg


class OpenVinoRunner:
    """An OpenVINO compiled model (CPU plugin) behind the :class:`Runner` protocol.

    Maps float32 [N, C, H, W] to float32 [N, classes]; the IR keeps the ONNX's
    batch dimension (dynamic when the export's is).
    """

    device = "cpu"

    def __init__(self, xml: Path, manifest: dict, threads: int | None):
        import openvino as ov

        problem = newer_ir_problem(xml, manifest, ov.__version__)
        if problem:
            raise problem
        opts = manifest.get("options", {})
        try:
            core = ov.Core()
            model = core.read_model(str(xml), str(xml.with_name(WEIGHTS)))
            self.compiled = core.compile_model(model, "CPU", compile_config(opts, threads))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgekitError(
                f"OpenVINO cannot load {xml}: {first}",
                "rebuild the artifact with edgekit build --force",
            ) from None
        self.request = self.compiled.create_infer_request()
        b = manifest["io"].get("batch")
        self.batch_range = (b["min"], b["max"]) if b else (1, None)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: x})
        return np.array(out[0], dtype=np.float32, copy=True)

    def close(self) -> None:
        self.request = None
        self.compiled = None


def fp32_compute_nodes(model) -> list[tuple[str, str]]:
    """``(name, type)`` of compute nodes of an ``openvino.Model`` whose data input is not
    quantized (no ``FakeQuantize`` before it): what an INT8 IR keeps in FP32."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in COMPUTE_OPS:
            continue
        src = op.input_value(0).get_node()
        while src.get_type_name() in SHAPE_OPS:  # a Reshape between FakeQuantize and MatMul
            src = src.input_value(0).get_node()
        if src.get_type_name() != "FakeQuantize":
            out.append((op.get_friendly_name(), op.get_type_name()))
    return out


def interleave_classes(y: np.ndarray) -> np.ndarray:
    """The order that deals a class-grouped calibration set out one class at a time.

    Args:
        y: int [K] labels of the calibration images (any order).

    Returns:
        int64 [K] indices: the first image of every class (in label order), then the
        second of every class, and so on; so every prefix of the reordered set holds
        each class within one image. Within a class the original order is kept.
    """
    y = np.asarray(y)
    by_label = np.argsort(y, kind="stable")
    rank = np.empty(len(y), dtype=np.int64)  # position of each image within its class
    starts = np.searchsorted(y[by_label], y[by_label], side="left")
    rank[by_label] = np.arange(len(y)) - starts
    return np.lexsort((y, rank)).astype(np.int64)


def bias_correction_images(n: int, fast: bool) -> int:
    """How many of ``n`` calibration images NNCF's bias correction reads: all of them
    for the fast one, the first ``max(int(0.2 n), 1)`` for the full one (NNCF 3.x,
    ``nncf/quantization/algorithms/post_training/pipeline.py``)."""
    return n if fast else max(int(n * 0.2), 1)


def nncf_quantize(model, x: np.ndarray, opts: dict):
    """``nncf.quantize`` of an ``openvino.Model`` on the calibration images ``x``
    (float32 [K, C, H, W], fed one image at a time, in the order given: the caller
    interleaves classes, see :func:`interleave_classes`) with the target's preset,
    bias-correction, overflow-fix and activation-range options.

    ``activation_range``: ``mean_minmax`` is NNCF's default for per-tensor activations
    (the mean over the images of each image's min and max); ``minmax`` takes the min and
    max over all of them (as ``ort-cpu-int8``'s MinMax calibration does), NNCF's
    ``RangeEstimatorParametersSet.MINMAX``."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    preset = {
        "performance": nncf.QuantizationPreset.PERFORMANCE,
        "mixed": nncf.QuantizationPreset.MIXED,
    }[opts["preset"]]
    data = nncf.Dataset([np.ascontiguousarray(x[i : i + 1]) for i in range(len(x))])
    ranges = {}  # NNCF's default otherwise (MEAN_MINMAX for per-tensor activations)
    if opts.get("activation_range", "mean_minmax") == "minmax":
        ranges["activations_range_estimator_params"] = RangeEstimatorParametersSet.MINMAX
    # NNCF draws progress bars on stdout/stderr: keep them out of edgekit's own output
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(
            model,
            data,
            preset=preset,
            subset_size=len(x),
            fast_bias_correction=bool(opts["fast_bias_correction"]),
            advanced_parameters=AdvancedQuantizationParameters(
                overflow_fix=OverflowFix(opts["overflow_fix"]), **ranges
            ),
        )


class OpenVinoBackend(Backend):
    name = "openvino"
    packages = ("openvino",)
    install_hint = INSTALL
    option_defaults = {"fp32": RUNTIME_DEFAULTS, "int8": INT8_DEFAULTS}
    option_specs = OPTION_SPECS

    def unavailable_reason(self, target) -> str | None:
        reason = super().unavailable_reason(target)
        if reason is None and target.precision == "int8" and not self._has_nncf():
            return f"nncf not installed (it quantizes the IR at build; {INSTALL})"
        return reason

    @staticmethod
    def _has_nncf() -> bool:
        from edgekit.backends.base import is_installed

        return is_installed("nncf")

    def build(self, ctx: BuildContext, target, out_dir: Path) -> BuildResult:
        """Convert ``ctx.onnx_path`` to an IR (and quantize it with NNCF for ``int8``).

        Raises:
            EdgekitError: no ONNX file; too few calibration images; OpenVINO's
                converter or NNCF failing (first line of its message).
        """
        import openvino as ov

        if ctx.onnx_path is None:
            raise EdgekitError(
                "OpenVINO targets are built from an ONNX file",
                "run edgekit export first and pass --onnx",
            )
        opts = target.options
        calib = extra = None
        x = None
        if target.precision == "int8":
            x, y, calib = ctx.calibration_for(target.name, opts["calib_per_class"])
            if opts.get("calib_order", "interleaved") == "interleaved":
                x = x[interleave_classes(y)]
            calib["order"] = opts.get("calib_order", "interleaved")
        try:
            model = ov.convert_model(str(ctx.onnx_path))
            if x is not None:
                model = nncf_quantize(model, x, opts)
            ov.save_model(model, str(out_dir / ARTIFACT), compress_to_fp16=False)
        except EdgekitError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgekitError(
                f"{target.name}: OpenVINO/NNCF failed on {ctx.onnx_path}: {first}",
                "check the ONNX export (edgekit export), or use an ONNX Runtime target",
            ) from None
        if calib is not None:
            fp32 = fp32_compute_nodes(model)
            calib["method"] = "nncf MinMax" + (
                " + fast bias correction" if opts["fast_bias_correction"] else " + bias correction"
            )
            extra = {
                "quantization": {
                    "tool": "nncf.quantize",
                    "preset": opts["preset"],
                    "overflow_fix": opts["overflow_fix"],
                    "activation_range": opts.get("activation_range", "mean_minmax"),
                    "bias_correction_images": bias_correction_images(
                        len(x), bool(opts["fast_bias_correction"])
                    ),
                    "fp32_nodes": sorted(n for n, _ in fp32),
                    "fp32_op_types": sorted({t for _, t in fp32}),
                }
            }
        return BuildResult(
            artifact=ARTIFACT,
            io=onnx_io(ctx.onnx_path),
            calibration=calib,
            extra=extra or {},
        )

    def verify_artifact(self, artifact_dir: Path, manifest: dict) -> None:
        """Bind the manifest to the hashed IR: its weights file is hashed too, and an
        ``int8`` manifest's IR holds ``FakeQuantize`` nodes (an FP32 IR relabelled int8
        is refused). Read as text: no OpenVINO needed.

        Raises:
            EdgekitError: ``model.bin`` not among the hashed files, or an int8 manifest
                whose IR has no quantized node.
        """
        if WEIGHTS not in manifest["files"]:
            raise EdgekitError(
                f"{artifact_dir}: the manifest does not hash the IR's weights ({WEIGHTS})",
                "rebuild the artifact with edgekit build --force",
            )
        if manifest["precision"] != "int8":
            return
        if b'type="FakeQuantize"' not in artifact_path(artifact_dir, manifest).read_bytes():
            raise EdgekitError(
                f"{artifact_dir}: the manifest says precision int8 but {ARTIFACT} has no "
                "FakeQuantize node; the manifest does not belong to this model",
                "rebuild the artifact with edgekit build --force",
            )

    def load(self, artifact_dir: Path, manifest: dict, threads: int | None) -> OpenVinoRunner:
        artifact_path(artifact_dir, manifest, WEIGHTS)  # hashed, inside the directory
        return OpenVinoRunner(artifact_path(artifact_dir, manifest), manifest, threads)


BACKEND = OpenVinoBackend()
