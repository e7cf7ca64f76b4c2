"""ONNX Runtime backend: ``ort-cpu`` (FP32) and, later, INT8 and CUDA targets.

The runner needs only ``onnxruntime`` and NumPy, so it works in the runtime
install on a device. Sessions use the execution provider recorded in the
manifest, sequential execution and ``--threads`` intra-op threads (see the
ONNX Runtime docs, "Thread management").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgekit.backends.base import Backend, BuildContext, BuildResult, onnx_io
from edgekit.errors import EdgekitError

ARTIFACT = "model.onnx"


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
                "install edgekit[gpu] for CUDAExecutionProvider",
            )
        try:
            self.session = ort.InferenceSession(str(path), so, providers=[provider])
        except Exception as e:
            raise EdgekitError(f"ONNX Runtime cannot load {path}: {e}") from None
        self.input = manifest["io"]["input"]
        self.device = "cuda" if provider.startswith(("CUDA", "Tensorrt")) else "cpu"
        b = manifest["io"].get("batch")
        self.batch_range = (b["min"], b["max"]) if b else (1, None)
        self.provider = provider

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]

    def close(self) -> None:
        self.session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    packages = ("onnxruntime",)
    install_hint = "pip install 'edgekit[cpu]'"
    option_defaults = {
        "fp32": {"execution_provider": "CPUExecutionProvider"},
    }

    def unavailable_reason(self, target) -> str | None:
        reason = super().unavailable_reason(target)
        if reason:
            return reason
        import onnxruntime as ort

        ep = target.options.get("execution_provider", "CPUExecutionProvider")
        if ep not in ort.get_available_providers():
            return f"{ep} not in this onnxruntime (install edgekit[gpu] on a CUDA machine)"
        return None

    def build(self, ctx: BuildContext, target, out_dir: Path) -> BuildResult:
        if ctx.onnx_path is None:
            raise EdgekitError(
                "ONNX Runtime targets are built from an ONNX file",
                "run edgekit export first and pass --onnx",
            )
        shutil.copyfile(ctx.onnx_path, out_dir / ARTIFACT)
        return BuildResult(artifact=ARTIFACT, io=onnx_io(out_dir / ARTIFACT))

    def load(self, artifact_dir: Path, manifest: dict, threads: int | None) -> OrtRunner:
        if manifest.get("options", {}).get("execution_provider") == "CUDAExecutionProvider":
            from edgekit.backends.gpu import ort_cuda_runner  # CuPy buffers, IOBinding

            return ort_cuda_runner(artifact_dir / manifest["artifact"], manifest, threads)
        return OrtRunner(artifact_dir / manifest["artifact"], manifest, threads)


BACKEND = OnnxRuntimeBackend()
