"""TorchScript backend: ``ts-fp32`` (traced + frozen) and ``ts-fx-int8`` (FX PTQ).

``ts-fp32`` traces the FP32 model with ``torch.jit.trace`` and freezes it with
``torch.jit.freeze`` (PyTorch docs, "TorchScript"). ``ts-fx-int8`` is FX
graph-mode post-training static quantization (PyTorch docs, "Quantization",
FX Graph Mode): ``prepare_fx`` with the engine's default qconfig mapping,
class-balanced calibration, ``convert_fx``, then trace + freeze. Both are
saved with ``torch.jit.save`` as ``model.ts.pt``.

Quantized kernels belong to an *engine*: ``x86`` (fbgemm + oneDNN) on x86-64
and ``qnnpack`` on ARM. The engine is recorded in the manifest and set again
with ``torch.backends.quantized.engine`` when the artifact is loaded; an
artifact whose engine does not belong to this machine's architecture is
refused. ``torch.ao.quantization`` is deprecated in favour of torchao's PT2E
flow (``prepare_pt2e``/``convert_pt2e``); its warnings are filtered around the
calls so they do not flood the user (see docs/targets.md).
"""

from __future__ import annotations

import contextlib
import json
import platform
import warnings
from pathlib import Path

import numpy as np

from edgekit.backends.base import Backend, BuildContext, BuildResult
from edgekit.errors import EdgekitError
from edgekit.manifest import artifact_path
from edgekit.schema import Choice, Int

ARTIFACT = "model.ts.pt"
#: Build record stored inside the TorchScript archive (``torch.jit.save(_extra_files=...)``).
RECORD = "edgekit.json"

#: quantized engine -> the machine architectures (``platform.machine()``) it is for.
ENGINE_ARCHS = {
    "x86": ("x86_64", "AMD64", "i686"),
    "fbgemm": ("x86_64", "AMD64", "i686"),
    "onednn": ("x86_64", "AMD64"),
    "qnnpack": ("aarch64", "arm64", "armv7l", "armv8l"),
}


def arch_family(machine: str) -> str:
    """``"x86"`` or ``"arm"`` (or the raw name) for a ``platform.machine()`` value."""
    m = machine.lower()
    if m in ("x86_64", "amd64", "i686", "i386"):
        return "x86"
    if m.startswith(("aarch64", "arm")):
        return "arm"
    return m


def auto_engine(machine: str | None = None) -> str:
    """The quantized engine for an architecture: ``x86`` on x86-64, ``qnnpack`` on ARM.

    Raises:
        EdgekitError: an architecture with no known engine.
    """
    fam = arch_family(machine or platform.machine())
    if fam == "x86":
        return "x86"
    if fam == "arm":
        return "qnnpack"
    raise EdgekitError(
        f"no quantized engine is known for the {machine or platform.machine()} architecture",
        'set engine = "x86" or "qnnpack" in the target file',
    )


def engine_problem(engine: str, machine: str | None = None) -> str | None:
    """Why ``engine`` cannot run on this machine (architecture or torch build); None if it can."""
    import torch

    here = machine or platform.machine()
    if engine not in ENGINE_ARCHS:
        return f"unknown quantized engine {engine!r} (known: {', '.join(ENGINE_ARCHS)})"
    if arch_family(here) not in {arch_family(a) for a in ENGINE_ARCHS[engine]}:
        return (
            f"the artifact uses the {engine} quantized engine, which is for "
            f"{'/'.join(ENGINE_ARCHS[engine][:2])}, but this machine is {here}; "
            f'rebuild it here (engine = "auto" picks {auto_engine(here)})'
        )
    if engine not in torch.backends.quantized.supported_engines:
        return (
            f"this torch build lacks the {engine} quantized engine "
            f"(it has {', '.join(torch.backends.quantized.supported_engines)})"
        )
    return None


@contextlib.contextmanager
def quiet_torch_ao():
    """Silence the torch.ao / TorchScript deprecation and tracer warnings inside the block."""
    import torch

    with warnings.catch_warnings():
        for cat in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.filterwarnings("ignore", category=cat, module=r"torch\.ao\..*")
            warnings.filterwarnings("ignore", category=cat, module=r"torch\.jit\..*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*")
        warnings.filterwarnings("ignore", message=r".*TorchScript.*deprecat.*")
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.*deprecat.*")
        warnings.filterwarnings(
            "ignore", message=r".*must run observer before calling calculate_qparams.*"
        )
        yield


#: The C++ deprecation line ``torch.jit.load`` of a quantized module prints straight to the
#: process's stderr (c10's default handler: no Python warning to filter), once per process.
QUANTIZER_DEPRECATION = r"Quantizer\.cpp:\d+\] Warning: torch\.quantize_per_tensor"


@contextlib.contextmanager
def native_stderr_without(pattern: str):
    """Hold back lines matching ``pattern`` that native code writes to fd 2 inside the block.

    Everything else written there is passed on to ``sys.stderr`` afterwards, in order.
    When fd 2 cannot be redirected (no such descriptor), the block runs unfiltered.
    """
    import os
    import re
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept = [ln for ln in text.splitlines(keepends=True) if not re.search(pattern, ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def archive_record(path: Path) -> dict | None:
    """The :data:`RECORD` stored in a TorchScript archive, read with ``zipfile`` (no unpickling).

    Returns:
        The record dict, or None when the archive has none (or is not a zip).
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.split("/")[1:] == ["extra", RECORD]]
            if len(names) != 1 or z.getinfo(names[0]).file_size > 65536:
                return None
            rec = json.loads(z.read(names[0]))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


class TorchScriptRunner:
    """A frozen ``torch.jit.ScriptModule`` behind the :class:`Runner` protocol."""

    device = "cpu"

    def __init__(self, path: Path, manifest: dict, threads: int | None):
        import torch

        engine = manifest.get("quantized_engine")
        if engine:
            problem = engine_problem(engine)
            if problem:
                raise EdgekitError(f"cannot load {path}: {problem}")
            torch.backends.quantized.engine = engine
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        try:
            with quiet_torch_ao(), native_stderr_without(QUANTIZER_DEPRECATION):
                self.module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgekitError(f"TorchScript cannot load {path}: {first}") from None
        self.module.eval()
        b = manifest["io"].get("batch")
        self.batch_range = (b["min"], b["max"]) if b else (1, None)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(x)).float().numpy()

    def close(self) -> None:
        self.module = None


class TorchScriptBackend(Backend):
    name = "torchscript"
    packages = ("torch",)
    install_hint = "pip install 'edgekit-toolchain[build]'"
    option_defaults = {
        "fp32": {},
        "int8": {"engine": "auto", "calib_per_class": 32, "calib_batch": 32},
    }
    option_specs = {
        "engine": Choice("auto", *ENGINE_ARCHS),
        "calib_per_class": Int(min=1, max=100_000),
        "calib_batch": Int(min=1, max=65_536),
    }

    def unavailable_reason(self, target) -> str | None:
        reason = super().unavailable_reason(target)
        if reason or target.precision != "int8":
            return reason
        engine = target.options.get("engine", "auto")
        if engine == "auto":
            try:
                engine = auto_engine()
            except EdgekitError as e:
                return e.message
        import torch

        if engine not in torch.backends.quantized.supported_engines:
            return f"this torch build lacks the {engine} quantized engine"
        return None

    def verify_artifact(self, artifact_dir: Path, manifest: dict) -> None:
        """Refuse a manifest whose ``quantized_engine`` differs from the archive's own record.

        The engine is written inside ``model.ts.pt`` at build (an extra file of the
        TorchScript zip archive), and that file is sha256-hashed in the manifest;
        so relabelling the manifest (e.g. ``qnnpack`` -> ``x86``, to run an ARM
        artifact on x86) no longer matches what the hashed archive records.

        Raises:
            EdgekitError: the engines differ, or an INT8 artifact (precision relabelled
                or not) has no record of a quantized engine.
        """
        path = artifact_path(artifact_dir, manifest)
        rec = archive_record(path)
        claimed = manifest.get("quantized_engine")
        if rec is None and claimed is None and manifest["precision"] != "int8":
            return  # an FP32 archive from before the record: no engine to bind
        recorded = rec.get("quantized_engine") if rec else None
        if rec is None or recorded != claimed or (manifest["precision"] == "int8" and not recorded):
            built = f"the {recorded} engine" if recorded else "no quantized engine"
            raise EdgekitError(
                f"{artifact_dir}: the manifest says quantized_engine {claimed!r} but "
                f"{path.name} records {built}; the manifest does not belong to this archive",
                "rebuild the artifact with edgekit build --force",
            )

    def runtime_unavailable_reason(self, manifest: dict) -> str | None:
        reason = super().runtime_unavailable_reason(manifest)
        if reason:
            return reason
        engine = manifest.get("quantized_engine")
        return engine_problem(engine) if engine else None

    def build(self, ctx: BuildContext, target, out_dir: Path) -> BuildResult:
        import torch

        model = ctx.torch_model().eval()
        h, w = ctx.preprocess.height, ctx.preprocess.width
        example = torch.zeros(1, 3, h, w)
        calib = None
        extra: dict = {"build_arch": platform.machine()}
        if target.precision == "int8":
            model, calib, engine = self._quantize_fx(ctx, model, target.options, target.name)
            extra["quantized_engine"] = engine
            extra["quantization"] = {
                "tool": "torch.ao.quantization.quantize_fx (prepare_fx/convert_fx)",
                "qconfig_mapping": f"get_default_qconfig_mapping({engine!r})",
            }
        with quiet_torch_ao(), torch.inference_mode():
            try:
                traced = torch.jit.trace(model, example, check_trace=False)
                frozen = torch.jit.freeze(traced.eval())
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise EdgekitError(
                    f"{target.name}: torch.jit.trace/freeze failed: {first}",
                    "the model must be traceable (no data-dependent control flow)",
                ) from None
            # Traced graphs may bake the batch size in; check that batch 4 runs.
            try:
                out = frozen(torch.zeros(4, 3, h, w))
                dynamic = tuple(out.shape) == (4, len(ctx.classes))
            except Exception:
                dynamic = False
        record = {"quantized_engine": extra.get("quantized_engine")}
        with quiet_torch_ao():
            torch.jit.save(
                frozen, str(out_dir / ARTIFACT), _extra_files={RECORD: json.dumps(record)}
            )
        io = {
            "input": "input",
            "output": "logits",
            "input_shape": ["batch" if dynamic else 1, 3, h, w],
            "output_shape": ["batch" if dynamic else 1, len(ctx.classes)],
            "dtype": "float32",
            "batch": None if dynamic else {"min": 1, "max": 1},
        }
        return BuildResult(artifact=ARTIFACT, io=io, calibration=calib, extra=extra)

    @staticmethod
    def _quantize_fx(ctx: BuildContext, model, opts: dict, where: str):
        """FX PTQ: prepare_fx -> calibrate -> convert_fx. Returns (model, calib record, engine)."""
        import torch

        engine = opts["engine"]
        if engine == "auto":
            engine = auto_engine()
        if engine not in ENGINE_ARCHS:
            raise EdgekitError(
                f"{where}: unknown engine {engine!r}",
                f"use auto or one of {', '.join(ENGINE_ARCHS)}",
            )
        if engine not in torch.backends.quantized.supported_engines:
            raise EdgekitError(f"{where}: this torch build lacks the {engine} quantized engine")
        for key in ("calib_per_class", "calib_batch"):
            v = opts[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise EdgekitError(f"{where}: option {key} must be a positive integer, got {v!r}")
        x, _, calib = ctx.calibration_for(where, opts["calib_per_class"])
        prev = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            with quiet_torch_ao():
                from torch.ao.quantization import get_default_qconfig_mapping
                from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

                h, w = ctx.preprocess.height, ctx.preprocess.width
                try:
                    prepared = prepare_fx(
                        model, get_default_qconfig_mapping(engine), (torch.zeros(1, 3, h, w),)
                    )
                except Exception as e:
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    raise EdgekitError(
                        f"{where}: FX cannot trace the model for quantization: {first}",
                        "FX graph mode needs symbolically traceable forward(); "
                        "try ort-cpu-int8 instead",
                    ) from None
                bs = int(opts["calib_batch"])
                with torch.inference_mode():
                    for i in range(0, len(x), bs):
                        prepared(torch.from_numpy(np.ascontiguousarray(x[i : i + bs])))
                quantized = convert_fx(prepared)
        finally:
            torch.backends.quantized.engine = prev
        torch.backends.quantized.engine = engine  # the trace below runs the quantized ops
        calib.update(method=f"default {engine} qconfig observers", batch=bs)
        return quantized, calib, engine

    def load(self, artifact_dir: Path, manifest: dict, threads: int | None) -> TorchScriptRunner:
        return TorchScriptRunner(artifact_path(artifact_dir, manifest), manifest, threads)


BACKEND = TorchScriptBackend()
