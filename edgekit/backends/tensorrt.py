"""TensorRT backend: ``trt-fp32``, ``trt-fp16`` and ``trt-int8``, for TensorRT 10 and 11.

Written against NVIDIA's documented Python API (TensorRT 10.x, and the 10.x ->
11.x migration guide). **The engine build and the runner were NOT run in this
workplace**: there is no TensorRT and no CUDA GPU here. What is tested on CPU:
the version dispatch (:func:`plan_build` with fake versions), the ONNX graphs it
feeds TensorRT (Q/DQ and FP16, run in ONNX Runtime), the engine-compatibility
check and the profile check.

Version dispatch (on ``tensorrt.__version__``):

============  ===========================================  =================================
precision     TensorRT 11                                  TensorRT 10 (JetPack 6)
============  ===========================================  =================================
fp32          FP32 ONNX, strongly typed                    same
fp16          FP16 ONNX (keep_io_types), strongly typed    ``fp16_mode="onnx"``: same;
                                                           ``"flag"``: FP32 ONNX + BuilderFlag.FP16
int8          Q/DQ ONNX, strongly typed                    ``int8_mode="qdq"``: same;
                                                           ``"implicit"``: FP32 ONNX + BuilderFlag.INT8
                                                           + IInt8EntropyCalibrator2 (CuPy batches)
============  ===========================================  =================================

TensorRT 11 removed ``BuilderFlag.FP16/INT8``, ``IBuilderConfig.int8_calibrator``
and weak typing; TensorRT 10.1 deprecated the implicit calibrators.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit.backends.base import Backend, BuildContext, BuildResult, onnx_io
from edgekit.errors import EdgekitError, UnavailableError
from edgekit.manifest import artifact_path
from edgekit.schema import Bool, Choice, Int, Num

ENGINE = "model.engine"
ONNX_FOR_TRT = "model.onnx"
SUPPORTED_MAJORS = (10, 11)

_COMMON = {
    "min_batch": 1,
    "opt_batch": 8,
    "max_batch": 128,
    "workspace_mb": 1024,
    "timing_cache": True,
    "cuda_graph": False,
}
_CALIB = {
    "calib_per_class": 32,
    "calibration_method": "entropy",
    "percentile": 99.99,
    "calib_batch": 32,
}
#: Type, allowed values and range of every option (see docs/tensorrt.md).
OPTION_SPECS = {
    "min_batch": Int(min=1, max=65_536),
    "opt_batch": Int(min=1, max=65_536),
    "max_batch": Int(min=1, max=65_536),
    "workspace_mb": Int(min=1, max=1 << 24),
    "timing_cache": Bool(),
    "cuda_graph": Bool(),
    "fp16_mode": Choice("onnx", "flag"),
    "int8_mode": Choice("qdq", "implicit"),
    "calib_per_class": Int(min=1, max=100_000),
    "calibration_method": Choice("entropy", "percentile", "minmax"),
    "percentile": Num(min=0, max=100, exclusive_min=True),
    "calib_batch": Int(min=1, max=65_536),
}


@dataclass
class BuildPlan:
    """How one precision is built on one TensorRT version.

    Attributes:
        onnx: which ONNX TensorRT parses: ``fp32`` | ``fp16`` | ``qdq``.
        strongly_typed: create the network STRONGLY_TYPED (always so on 11).
        flags: ``trt.BuilderFlag`` names to set (TensorRT 10 only).
        calibrator: attach an ``IInt8EntropyCalibrator2`` (TensorRT 10 implicit INT8).
    """

    major: int
    onnx: str
    strongly_typed: bool
    flags: list[str] = field(default_factory=list)
    calibrator: bool = False


def trt_major(version: str) -> int:
    """Major version of a ``tensorrt.__version__`` string such as ``"10.3.0.26"``.

    Raises:
        EdgekitError: unparsable, or a major version edgekit does not support.
    """
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise EdgekitError(f"cannot read the TensorRT version {version!r}") from None
    if major not in SUPPORTED_MAJORS:
        raise EdgekitError(
            f"TensorRT {version} is not supported",
            "edgekit builds with TensorRT 10.x (JetPack 6) or 11.x",
        )
    return major


def plan_build(version: str, precision: str, options: dict) -> BuildPlan:
    """Choose the build path for ``precision`` on TensorRT ``version`` (see module doc).

    Raises:
        EdgekitError: unsupported version, or an option the version cannot honour
            (``int8_mode="implicit"`` or ``fp16_mode="flag"`` on TensorRT 11).
    """
    major = trt_major(version)
    if precision == "fp32":
        return BuildPlan(major, "fp32", True)
    if precision == "fp16":
        mode = options.get("fp16_mode", "onnx")
        if mode not in ("onnx", "flag"):
            raise EdgekitError(f"fp16_mode must be 'onnx' or 'flag', got {mode!r}")
        if mode == "flag":
            if major >= 11:
                raise EdgekitError(
                    f"fp16_mode = 'flag' needs TensorRT 10; TensorRT {version} removed "
                    "BuilderFlag.FP16",
                    "use fp16_mode = 'onnx' (an FP16 ONNX, built strongly typed)",
                )
            return BuildPlan(major, "fp32", False, ["FP16"])
        return BuildPlan(major, "fp16", True)
    if precision == "int8":
        mode = options.get("int8_mode", "qdq")
        if mode not in ("qdq", "implicit"):
            raise EdgekitError(f"int8_mode must be 'qdq' or 'implicit', got {mode!r}")
        if mode == "implicit":
            if major >= 11:
                raise EdgekitError(
                    f"int8_mode = 'implicit' needs TensorRT 10; TensorRT {version} removed "
                    "the INT8 calibrators and BuilderFlag.INT8",
                    "use int8_mode = 'qdq' (explicit quantization)",
                )
            return BuildPlan(major, "fp32", False, ["INT8"], calibrator=True)
        return BuildPlan(major, "qdq", True)
    raise EdgekitError(f"TensorRT backend has no precision {precision!r}")


def profile_shapes(options: dict, chw: tuple[int, int, int]) -> dict:
    """min/opt/max input shapes of the optimization profile.

    Raises:
        EdgekitError: not ``1 <= min <= opt <= max``.
    """
    lo, opt, hi = options["min_batch"], options["opt_batch"], options["max_batch"]
    if not (isinstance(lo, int) and isinstance(opt, int) and isinstance(hi, int)):
        raise EdgekitError("min_batch, opt_batch and max_batch must be integers")
    if not 1 <= lo <= opt <= hi:
        raise EdgekitError(
            f"the batch profile must satisfy 1 <= min_batch <= opt_batch <= max_batch, "
            f"got {lo}, {opt}, {hi}"
        )
    return {k: [n, *chw] for k, n in (("min", lo), ("opt", opt), ("max", hi))}


# ---------------------------------------------------------------- ONNX preparation


def write_onnx_for_trt(ctx: BuildContext, target, out_path: Path, plan_onnx: str, log=None) -> dict:
    """Write the ONNX TensorRT will parse (FP32 copy, FP16, or Q/DQ INT8).

    Needs ONNX Runtime and onnx (and onnxconverter-common for FP16), not TensorRT:
    this is what ``edgekit build --onnx-only`` writes for a Jetson.

    Returns:
        ``{"onnx": kind, "calibration": record or None, "fp16": record or None}``.
    """
    import shutil

    if ctx.onnx_path is None:
        raise EdgekitError("TensorRT targets are built from an ONNX file", "run edgekit export")
    opts = target.options
    rec: dict = {"onnx": plan_onnx, "calibration": None, "fp16": None}
    if plan_onnx == "fp32":
        shutil.copyfile(ctx.onnx_path, out_path)
    elif plan_onnx == "fp16":
        sample = ctx.preprocess and ctx.calib_split is not None
        x = ctx.calibration_set(4)[0] if sample else None
        rec["fp16"] = make_fp16(ctx.onnx_path, out_path, x)
    elif plan_onnx == "qdq":
        from edgekit.qdq import make_qdq_onnx

        x, _, crec = ctx.calibration_set(opts["calib_per_class"])
        q = make_qdq_onnx(
            ctx.onnx_path,
            out_path,
            x,
            method=opts["calibration_method"],
            percentile=opts["percentile"],
            batch=opts["calib_batch"],
            cache_dir=Path(ctx.onnx_path).parent / "cache",
            log=log,
        )
        rec["calibration"] = {**crec, **q}
    else:
        raise EdgekitError(f"internal: unknown ONNX kind {plan_onnx!r}")
    return rec


def make_fp16(onnx_path: Path, out_path: Path, sample_x) -> dict:
    from edgekit.qdq import make_fp16_onnx

    return make_fp16_onnx(onnx_path, out_path, sample_x)


def onnx_only_plan(precision: str, options: dict) -> str:
    """The ONNX kind to write without TensorRT: what TensorRT 11 (and 10's default) parses."""
    return {"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[precision]


# ---------------------------------------------------------------- engine compatibility


def engine_env(trt_version: str, info: dict) -> dict:
    """What an engine is tied to: TensorRT, CUDA runtime and driver, GPU, compute capability."""
    return {
        "tensorrt": trt_version,
        "cuda_runtime": info.get("cuda_runtime"),
        "cuda_driver": info.get("cuda_driver"),
        "gpu": info.get("gpu"),
        "compute_capability": info.get("compute_capability"),
    }


def engine_mismatch(recorded: dict, current: dict) -> str | None:
    """Why an engine built in ``recorded`` cannot be loaded in ``current``; None if it can.

    TensorRT engines are specific to the TensorRT version and the GPU model
    (compute capability); a different GPU name of the same capability is also
    refused, since tactics were timed on the build GPU. A newer driver is
    accepted (CUDA drivers are backward compatible); an older one is not.
    """
    for key, what in (
        ("tensorrt", "TensorRT"),
        ("compute_capability", "compute capability"),
        ("gpu", "GPU"),
    ):
        if recorded.get(key) != current.get(key):
            return f"{what} {recorded.get(key)} at build time, {current.get(key)} here"
    rd, cd = recorded.get("cuda_driver"), current.get("cuda_driver")
    if rd and cd and _ver(cd) < _ver(rd):
        return f"CUDA driver {rd} at build time, older {cd} here"
    return None


def _ver(s: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(s).split(".") if p.isdigit())


# ---------------------------------------------------------------- TensorRT calls (not run here)


class _EntropyCalibratorFactory:
    """Builds an ``IInt8EntropyCalibrator2`` subclass lazily (``tensorrt`` imported inside)."""

    @staticmethod
    def make(batches: list, input_name: str, cache, key: str):
        """A TensorRT-10 entropy calibrator over CuPy device batches.

        ``get_batch`` returns the device pointers (``batch.data.ptr``) of the CuPy
        arrays, the published method; ``read/write_calibration_cache`` use the
        edgekit calibration cache under ``key`` (ONNX hash + calibration hash).

        TensorRT 10 only: TensorRT 11 removed the implicit INT8 calibrators and
        ``IBuilderConfig.int8_calibrator`` (TensorRT 11 docs, "Removed Python APIs and
        Replacements": explicit quantization with Q/DQ nodes); :func:`plan_build` never
        asks for a calibrator on 11. ``tensorrt`` is imported here, not passed in, so
        the type check (tests/test_tensorrt_types.py) sees these calls.
        """
        import tensorrt as trt

        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                trt.IInt8EntropyCalibrator2.__init__(self)
                self.i = 0

            def get_batch_size(self):
                return int(batches[0].shape[0])

            def get_batch(self, names):
                if self.i >= len(batches):
                    return None
                b = batches[self.i]
                self.i += 1
                return [int(b.data.ptr)]

            def read_calibration_cache(self):
                return cache.load_blob(key)

            def write_calibration_cache(self, data):
                cache.save_blob(key, bytes(data))

        return Calibrator()


def build_engine(
    onnx_path: Path,
    plan: BuildPlan,
    options: dict,
    shapes: dict,
    input_name: str,
    cache_dir: Path,
    calibrator=None,
    log=None,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (TensorRT Python API).

    Profile over the batch range, workspace limit
    (``set_memory_pool_limit(MemoryPoolType.WORKSPACE)``), timing cache
    (``create_timing_cache``/``set_timing_cache``, saved back after the build).

    Raises:
        EdgekitError: the parser or the builder failed (parser errors listed).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed and plan.major == 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # 11: strong typing is always on
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgekitError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options["workspace_mb"]) << 20)
    for f in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if calibrator is not None:  # TensorRT 10 only (plan_build): 11 removed both, see above
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    tc_path = Path(cache_dir) / f"timing-trt{trt.__version__}.cache"
    if options["timing_cache"]:
        blob = tc_path.read_bytes() if tc_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    t0 = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EdgekitError("TensorRT failed to build the engine (see the TensorRT log above)")
    if options["timing_cache"]:
        tc_path.parent.mkdir(parents=True, exist_ok=True)
        tc_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    if log:
        log(f"TensorRT {trt.__version__}: engine built in {time.perf_counter() - t0:.1f} s")
    return bytes(engine)


class TensorRTBackend(Backend):
    name = "tensorrt"
    packages = ("tensorrt",)
    install_hint = "TensorRT comes from JetPack or NVIDIA's index; see docs/tensorrt.md"
    option_defaults = {
        "fp32": dict(_COMMON),
        "fp16": {**_COMMON, "fp16_mode": "onnx"},
        "int8": {**_COMMON, **_CALIB, "int8_mode": "qdq"},
    }
    option_specs = OPTION_SPECS
    #: the spellings before the options were shared with onnxruntime/torchscript (issue 15)
    option_aliases = {
        "calibration_per_class": "calib_per_class",
        "calibration_batch": "calib_batch",
        "calibration_percentile": "percentile",
    }

    def unavailable_reason(self, target) -> str | None:
        from edgekit.backends.base import is_installed

        if not is_installed("tensorrt"):
            return "TensorRT not installed (it comes from JetPack or NVIDIA's index)"
        from edgekit.calibration import cuda_available

        if not cuda_available():
            return "needs a CUDA GPU (and CuPy: pip install 'edgekit-toolchain[gpu]')"
        return None

    def runtime_unavailable_reason(self, manifest: dict) -> str | None:
        return self.unavailable_reason(None)

    def prepare_onnx(self, ctx: BuildContext, target, out_dir: Path, log=None) -> dict:
        """``--onnx-only``: write the ONNX TensorRT would parse, and a build record."""
        kind = onnx_only_plan(target.precision, target.options)
        rec = write_onnx_for_trt(ctx, target, out_dir / ONNX_FOR_TRT, kind, log)
        chw = tuple(onnx_io(out_dir / ONNX_FOR_TRT)["input_shape"][1:])
        rec["profile"] = profile_shapes(target.options, chw)
        rec["target"] = target.to_dict()
        rec["note"] = (
            "Build on the device with TensorRT 10 or 11, strongly typed, e.g. "
            "trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped "
            f"--minShapes=input:{'x'.join(map(str, rec['profile']['min']))} "
            f"--optShapes=input:{'x'.join(map(str, rec['profile']['opt']))} "
            f"--maxShapes=input:{'x'.join(map(str, rec['profile']['max']))} "
            "(use your input name; TensorRT 11 needs no --stronglyTyped)"
        )
        (out_dir / "tensorrt-build.json").write_text(json.dumps(rec, indent=2, default=str))
        return rec

    def build(self, ctx: BuildContext, target, out_dir: Path) -> BuildResult:
        import tensorrt as trt

        from edgekit.backends.gpu import gpu_info

        if ctx.onnx_path is None:
            raise EdgekitError("TensorRT targets are built from an ONNX file", "run edgekit export")
        onnx_path = Path(ctx.onnx_path)
        plan = plan_build(trt.__version__, target.precision, target.options)
        onnx_file = out_dir / ONNX_FOR_TRT
        rec = write_onnx_for_trt(ctx, target, onnx_file, plan.onnx)
        io = onnx_io(onnx_file)
        chw = tuple(io["input_shape"][1:])
        shapes = profile_shapes(target.options, chw)
        cache_dir = onnx_path.parent / "cache"
        calibrator = None
        if plan.calibrator:
            from edgekit.calibration import CalibrationCache, cache_key, device_batches, hash_array
            from edgekit.fileio import sha256_file

            x, _, crec = ctx.calibration_set(target.options["calib_per_class"])
            batches, dev = device_batches(
                x, target.options["calib_batch"], "cuda", io["input_shape"]
            )
            if batches[-1].shape[0] != batches[0].shape[0]:
                batches = batches[:-1]  # TensorRT calibrators take a fixed batch size
            key = cache_key(
                sha256_file(onnx_path),
                hash_array(x),
                {"tool": "trt-entropy2", "trt": trt.__version__},
            )
            calibrator = _EntropyCalibratorFactory.make(
                batches, io["input"], CalibrationCache(cache_dir), key
            )
            rec["calibration"] = {
                **crec,
                "method": "entropy (IInt8EntropyCalibrator2)",
                "cache_key": key,
                "device": dev,
            }
        engine = build_engine(
            onnx_file, plan, target.options, shapes, io["input"], cache_dir, calibrator
        )
        (out_dir / ENGINE).write_bytes(engine)
        io["batch"] = {"min": shapes["min"][0], "max": shapes["max"][0]}
        extra = {
            "tensorrt": {
                "env": engine_env(trt.__version__, gpu_info()),
                "plan": asdict(plan),
                "profile": shapes,
                "fp16": rec.get("fp16"),
            }
        }
        return BuildResult(artifact=ENGINE, io=io, calibration=rec.get("calibration"), extra=extra)

    def load(self, artifact_dir: Path, manifest: dict, threads: int | None):
        import tensorrt as trt

        from edgekit.backends.gpu import gpu_info

        recorded = manifest.get("tensorrt", {}).get("env", {})
        current = engine_env(trt.__version__, gpu_info())
        why = engine_mismatch(recorded, current)
        if why:
            raise EdgekitError(
                f"{artifact_dir}: this engine was built for another setup ({why}); "
                "TensorRT engines are not portable",
                f"rebuild it here: edgekit build --target {manifest['target']} --force",
            )
        return TrtRunner(artifact_path(artifact_dir, manifest), manifest)


class TrtRunner:
    """A deserialized engine behind :class:`edgekit.backends.gpu.GpuRunner` (NOT RUN here)."""

    device = "cuda"

    def __init__(self, path: Path, manifest: dict):
        import tensorrt as trt  # imported here, not passed in: the type check sees the calls

        from edgekit.backends.gpu import GpuRunner

        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EdgekitError(
                f"TensorRT could not deserialize {path}",
                f"rebuild it: edgekit build --target {manifest['target']} --force",
            )
        self.context = self.engine.create_execution_context()
        io = manifest["io"]
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        )
        self.output = next(
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        )
        b = io["batch"]
        self.batch_range = (b["min"], b["max"])
        chw = tuple(io["input_shape"][1:])

        def on_shape(n):
            self.context.set_input_shape(self.input, (n, *chw))

        def launch(d_in, d_out, n, stream):
            self.context.set_tensor_address(self.input, int(d_in.data.ptr))
            self.context.set_tensor_address(self.output, int(d_out.data.ptr))
            if not self.context.execute_async_v3(stream.ptr):
                raise EdgekitError("TensorRT execute_async_v3 failed")

        self.gpu = GpuRunner(
            launch,
            chw,
            int(io["output_shape"][-1]),
            self.batch_range,
            cuda_graph=bool(manifest.get("options", {}).get("cuda_graph", False)),
            on_shape=on_shape,
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.gpu(x)

    def gpu_report(self) -> dict:
        return self.gpu.gpu_report()

    def close(self) -> None:
        self.gpu.close()
        # drop the execution context before the engine, the engine before the runtime
        for name in ("context", "engine", "runtime"):
            self.__dict__.pop(name, None)


BACKEND = TensorRTBackend()


def write_onnx_only(target, ctx: BuildContext, work_root: Path, force: bool = False) -> dict:
    """``edgekit build --onnx-only``: write ``WORK/onnx-for-tensorrt/TARGET/model.onnx``.

    Raises:
        EdgekitError: not a TensorRT target, the directory exists without ``force``,
            or the target name is not a plain name (the path would leave the root).
    """
    from edgekit.fileio import atomic_dir, contained

    if target.backend != "tensorrt":
        raise EdgekitError(
            f"--onnx-only is for TensorRT targets; {target.name} uses {target.backend}",
            "drop --onnx-only",
        )
    out = contained(Path(work_root) / "onnx-for-tensorrt", target.name, "target name", True)
    with atomic_dir(out, force=force) as tmp:
        rec = BACKEND.prepare_onnx(ctx, target, tmp)
    rec["path"] = str(out / ONNX_FOR_TRT)
    return rec


__all__ = ["BACKEND", "BuildPlan", "UnavailableError", "engine_mismatch", "plan_build"]
