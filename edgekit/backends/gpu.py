"""The GPU runner shared by ``trt-*`` and ``ort-cuda``: CuPy buffers, one CUDA stream,
asynchronous copies, CUDA-event timing, optional CUDA-graph capture, GPU memory.

A backend supplies a *launcher*: ``launch(d_in, d_out, n, stream)`` enqueues the
inference of ``n`` images from device buffer ``d_in`` into ``d_out`` on
``stream`` (TensorRT's ``execute_async_v3``, or ONNX Runtime's IOBinding run).
:class:`GpuRunner` does the rest, behind the :class:`edgekit.backends.base.Runner`
protocol (NumPy in, NumPy out)::

    host x -> pinned -> H2D (async) -> launch -> D2H (async) -> host logits
              e0 ------- e1 ------------------- e2 ----------- e3   (CUDA events)

``last_timing`` holds the event times of the last call in milliseconds: with the
host-device copies (e0..e3) and without them (e1..e2). CUDA events time the GPU
work on the stream itself (CUDA C Programming Guide, "Events"), which the host
clock cannot isolate.

Nothing here imports CuPy at module import time. NOT RUN in this workplace (no
CUDA GPU); the pure helpers (profile checks, version comparison) are tested on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, UnavailableError


def check_batch_in_range(n: int, batch_range: tuple[int, int | None], what: str = "engine") -> None:
    """Refuse a batch outside the artifact's optimization profile.

    Raises:
        EdgekitError: ``n`` below the minimum or above the maximum.
    """
    lo, hi = batch_range
    if n < lo or (hi is not None and n > hi):
        raise EdgekitError(
            f"batch of {n} is outside the {what}'s profile (batch {lo}..{hi})",
            "use a batch size in that range, or rebuild with other min_batch/max_batch "
            "in the target file",
        )


def require_cuda() -> Any:
    """Import CuPy and check that a CUDA device is present.

    Raises:
        UnavailableError: no CuPy or no CUDA device.
    """
    try:
        import cupy
    except ImportError:
        raise UnavailableError(
            "CuPy is not installed", "install edgekit-toolchain[gpu] on a machine with a CUDA GPU"
        ) from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise UnavailableError(f"needs a CUDA GPU ({e})") from None
    if n < 1:
        raise UnavailableError("needs a CUDA GPU (none found)")
    return cupy


def gpu_info(device: int = 0) -> dict:
    """GPU name, compute capability, CUDA runtime and driver versions, memory (MB).

    Raises:
        UnavailableError: no CuPy or no CUDA device.
    """
    cupy = require_cuda()
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(device)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    free, total = rt.memGetInfo()
    return {
        "gpu": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "cuda_runtime": version_str(rt.runtimeGetVersion()),
        "cuda_driver": version_str(rt.driverGetVersion()),
        "memory_total_mb": round(total / 2**20, 1),
        "memory_free_mb": round(free / 2**20, 1),
    }


def version_str(v: int) -> str:
    """CUDA's integer version (e.g. 12060) as ``"12.6"``."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def gpu_memory_mb() -> dict:
    """Device memory in use (MB): the whole device and CuPy's memory pool."""
    cupy = require_cuda()
    free, total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    return {
        "device_used_mb": round((total - free) / 2**20, 1),
        "cupy_pool_mb": round(pool.used_bytes() / 2**20, 1),
    }


class GpuRunner:
    """A launcher behind the Runner protocol, with CuPy buffers on one stream.

    Args:
        launch: ``launch(d_in, d_out, n, stream)``; enqueues inference on ``stream``.
        input_shape: ``(C, H, W)`` of one image.
        num_outputs: logits per image.
        batch_range: ``(min, max)`` batch sizes (the engine's profile).
        cuda_graph: capture ``launch`` into a CUDA graph per batch size and replay
            it (for launch-bound small models; the launcher must be capturable).
        graph_by: who captures the graph: ``"runner"`` (this class, CuPy stream
            capture around ``launch``) or ``"launcher"`` (the launcher replays a graph
            of its own, e.g. ONNX Runtime's CUDA graph; the runner only reports it).
        on_shape: ``on_shape(n)`` called before the first launch of a new batch
            size (TensorRT: ``set_input_shape``), outside any graph capture.
    """

    device = "cuda"

    def __init__(
        self,
        launch: Callable,
        input_shape: tuple[int, ...],
        num_outputs: int,
        batch_range: tuple[int, int | None],
        cuda_graph: bool = False,
        on_shape: Callable[[int], None] | None = None,
        graph_by: str = "runner",
    ):
        cp = require_cuda()
        self.cp = cp
        self.launch = launch
        self.on_shape = on_shape
        self.input_shape = tuple(input_shape)
        self.num_outputs = int(num_outputs)
        self.batch_range = batch_range
        self.cuda_graph = cuda_graph
        self.graph_by = graph_by
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.events = [cp.cuda.Event() for _ in range(4)]
        self._bufs: dict[int, tuple] = {}
        self._graphs: dict[int, Any] = {}
        self.last_timing: dict[str, float] = {}
        self.timings: list[dict[str, float]] = []

    def _buffers(self, n: int):
        if n not in self._bufs:
            import cupyx

            cp = self.cp
            d_in = cp.empty((n, *self.input_shape), dtype=cp.float32)
            d_out = cp.empty((n, self.num_outputs), dtype=cp.float32)
            h_in = cupyx.empty_pinned((n, *self.input_shape), dtype=np.float32)
            h_out = cupyx.empty_pinned((n, self.num_outputs), dtype=np.float32)
            if self.on_shape:
                self.on_shape(n)
            self._bufs[n] = (d_in, d_out, h_in, h_out)
        return self._bufs[n]

    def _infer(self, d_in, d_out, n):
        if not self.cuda_graph or self.graph_by != "runner":
            self.launch(d_in, d_out, n, self.stream)
            return
        g = self._graphs.get(n)
        if g is None:
            self.launch(d_in, d_out, n, self.stream)  # warm-up outside capture (TensorRT docs)
            self.stream.begin_capture()
            self.launch(d_in, d_out, n, self.stream)
            g = self._graphs[n] = self.stream.end_capture()
        g.launch(self.stream)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = int(x.shape[0])
        check_batch_in_range(n, self.batch_range)
        if tuple(x.shape[1:]) != self.input_shape:
            raise EdgekitError(
                f"input has shape {tuple(x.shape)}; the engine takes [N, {', '.join(map(str, self.input_shape))}]"
            )
        d_in, d_out, h_in, h_out = self._buffers(n)
        e0, e1, e2, e3 = self.events
        h_in[...] = x
        s = self.stream
        e0.record(s)
        d_in.set(h_in, stream=s)  # async H2D from pinned memory
        e1.record(s)
        self._infer(d_in, d_out, n)
        e2.record(s)
        d_out.get(stream=s, out=h_out)  # async D2H into pinned memory
        e3.record(s)
        e3.synchronize()
        t = self.cp.cuda.get_elapsed_time
        self.last_timing = {"with_copies_ms": t(e0, e3), "compute_ms": t(e1, e2)}
        self.timings.append(self.last_timing)
        return np.array(h_out, copy=True)

    def run_device(self, d_in):
        """Inference on a CuPy array already on the device (no copies); CuPy logits."""
        n = int(d_in.shape[0])
        check_batch_in_range(n, self.batch_range)
        _, d_out, _, _ = self._buffers(n)
        self._infer(self.cp.ascontiguousarray(d_in, dtype=self.cp.float32), d_out, n)
        self.stream.synchronize()
        return d_out.copy()

    def reset_stats(self) -> None:
        """Forget the CUDA-event timings so far (the harness calls it after warm-up)."""
        self.timings.clear()

    def gpu_report(self) -> dict:
        """Latency with and without copies (median/p90 over calls so far, ms) and memory."""
        rep: dict = {"cuda_graph": self.cuda_graph, **gpu_memory_mb()}
        if self.cuda_graph:
            rep["cuda_graph_by"] = self.graph_by
        if self.timings:
            for k in ("with_copies_ms", "compute_ms"):
                v = np.array([t[k] for t in self.timings])
                rep[k] = {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90))}
        return rep

    def close(self) -> None:
        self._graphs.clear()
        self._bufs.clear()


def ort_provider_options(provider: str, stream_ptr: int, cuda_graph: bool = False) -> list:
    """The ``providers`` list for an ONNX Runtime session on the runner's stream.

    - No ``device_id``: device 0 is the default, and since ONNX Runtime 1.26 a
      ``device_id`` option makes session creation first look for a *plugin* EP device
      of that name, logging ``No registered plugin EP device found for
      'CUDAExecutionProvider' with device_id=0`` at WARNING on every session when none
      is registered (onnxruntime_pybind_state.cc; reported in immich-app/immich#30530).
      Leaving it out removes that one message; the log level stays as it was, so real
      warnings still show.
    - ``cuda_graph``: ONNX Runtime's own CUDA-graph capture (``enable_cuda_graph``;
      ONNX Runtime docs, CUDA EP, "Using CUDA Graphs"): it needs IOBinding to the same
      device addresses on every run, which the runner's per-batch-size buffers give.
    - TensorRT EP: with the CUDA EP after it for nodes TensorRT does not take.

    Args:
        provider: ``CUDAExecutionProvider`` or ``TensorrtExecutionProvider``.
        stream_ptr: the CUDA stream (``cupy.cuda.Stream.ptr``) ORT must run on.
        cuda_graph: ask ORT's CUDA EP to capture and replay a CUDA graph.

    Returns:
        ``[(name, {option: str}), ...]`` for ``onnxruntime.InferenceSession``.
    """
    cuda = {"user_compute_stream": str(stream_ptr)}
    if cuda_graph:
        cuda["enable_cuda_graph"] = "1"
    if provider == "TensorrtExecutionProvider":
        trt = {"user_compute_stream": str(stream_ptr), "has_user_compute_stream": "1"}
        return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", cuda)]
    if provider != "CUDAExecutionProvider":
        raise EdgekitError(f"the GPU runner does not drive {provider}")
    return [("CUDAExecutionProvider", cuda)]


def ort_cuda_runner(path, manifest: dict, threads: int | None) -> GpuRunner:
    """ONNX Runtime with the CUDA (or TensorRT) execution provider behind :class:`GpuRunner`.

    ORT runs on the runner's stream (``user_compute_stream``) and reads/writes the
    CuPy buffers in place through IOBinding (``bind_input``/``bind_output`` with
    device pointers), so the copies and their timing are the runner's. With the
    manifest's ``cuda_graph`` option, ORT captures one CUDA graph per batch size
    (run option ``gpu_graph_id``) and replays it; ORT, not the runner, captures,
    because ORT's ``Run`` synchronizes its stream, which a stream capture forbids.

    Raises:
        UnavailableError: no CUDA GPU/CuPy, or the execution provider is missing.
    """
    import onnxruntime as ort

    require_cuda()
    opts = manifest.get("options", {})
    provider = opts.get("execution_provider", "CUDAExecutionProvider")
    cuda_graph = bool(opts.get("cuda_graph", False))
    if provider not in ort.get_available_providers():
        raise UnavailableError(
            f"{provider} is not in this onnxruntime", "install edgekit-toolchain[gpu]"
        )
    io = manifest["io"]
    b = io.get("batch")
    batch_range = (b["min"], b["max"]) if b else (1, None)
    holder: dict = {}
    graph_ids: dict[int, int] = {}

    def make_session(stream):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = int(threads or 0)
        providers = ort_provider_options(provider, stream.ptr, cuda_graph)
        return ort.InferenceSession(str(path), so, providers=providers)

    def launch(d_in, d_out, n, stream):
        sess = holder.get("sess") or holder.setdefault("sess", make_session(stream))
        bind = sess.io_binding()
        bind.bind_input(io["input"], "cuda", 0, np.float32, list(d_in.shape), d_in.data.ptr)
        bind.bind_output(io["output"], "cuda", 0, np.float32, list(d_out.shape), d_out.data.ptr)
        if cuda_graph:
            ro = ort.RunOptions()
            ro.add_run_config_entry("gpu_graph_id", str(graph_ids.setdefault(n, len(graph_ids))))
            sess.run_with_iobinding(bind, ro)
        else:
            sess.run_with_iobinding(bind)

    c, h, w = io["input_shape"][1:]
    num_out = io["output_shape"][-1]
    return GpuRunner(
        launch, (c, h, w), int(num_out), batch_range, cuda_graph=cuda_graph, graph_by="launcher"
    )
