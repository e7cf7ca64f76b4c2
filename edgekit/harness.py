"""The uniform benchmark harness: every target is measured by the same code.

It drives :class:`edgekit.backends.base.Runner` objects only and never
branches on the backend. The rules follow MLPerf Inference's SingleStream
scenario (LoadGen): warm-up first, then queries of batch 1 are issued one after
another until both a minimum query count and a minimum duration are reached;
latency percentiles come from all timed queries. Throughput is measured per
batch size, and accuracy in a separate pass over the whole test split.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from edgekit.errors import EdgekitError

PERCENTILES = (50, 90, 99)


@dataclass
class BenchConfig:
    """Measurement rules.

    Attributes:
        warmup_queries: untimed batch-1 queries before timing.
        min_queries: timed batch-1 queries, at least (MLPerf SingleStream).
        min_duration_s: seconds of timed batch-1 queries, at least.
        batch_sizes: throughput sweep; sizes the artifact cannot take are skipped.
        throughput_min_s: seconds per batch size in the throughput sweep.
        accuracy: run the accuracy pass.
        accuracy_batch: batch size of the accuracy pass (clipped to the artifact's range).
        strict_batch: a batch size of the sweep the artifact cannot take is an error
            (set when the user chose ``--batch-sizes``); otherwise it is skipped.
    """

    warmup_queries: int = 20
    min_queries: int = 200
    min_duration_s: float = 10.0
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    throughput_min_s: float = 2.0
    accuracy: bool = True
    accuracy_batch: int = 128
    strict_batch: bool = False

    @classmethod
    def quick(cls) -> BenchConfig:
        """Short rules for tests and demos (numbers are indicative only)."""
        return cls(
            warmup_queries=5,
            min_queries=30,
            min_duration_s=0.5,
            batch_sizes=(1, 32),
            throughput_min_s=0.3,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def latency_stats(samples_ms: np.ndarray) -> dict:
    """min, mean, p50, p90, p99, max (ms), coefficient of variation, count.

    Percentiles use NumPy's default (linear interpolation) method.
    """
    s = np.asarray(samples_ms, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no latency samples")
    out = {"min": float(s.min()), "mean": float(s.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(s, p))
    out["max"] = float(s.max())
    out["cv"] = float(s.std() / s.mean()) if s.mean() > 0 else 0.0
    out["queries"] = int(s.size)
    return out


def measure_latency(
    runner, x1: np.ndarray, cfg: BenchConfig, clock=time.perf_counter
) -> tuple[dict, np.ndarray]:
    """SingleStream latency at batch 1.

    Args:
        runner: a :class:`Runner`.
        x1: float32 [1, C, H, W].
        cfg: the stopping rules.
        clock: seconds as float (injectable for tests).

    Returns:
        ``(latency_stats(...) plus "duration_s", raw samples in ms)``.
    """
    for _ in range(cfg.warmup_queries):
        runner(x1)
    reset = getattr(runner, "reset_stats", None)  # e.g. a GPU runner's CUDA-event timings
    if callable(reset):
        reset()
    samples = []
    start = clock()
    while True:
        t0 = clock()
        runner(x1)
        t1 = clock()
        samples.append((t1 - t0) * 1e3)
        if len(samples) >= cfg.min_queries and t1 - start >= cfg.min_duration_s:
            break
    arr = np.asarray(samples)
    stats = latency_stats(arr)
    stats["duration_s"] = float(clock() - start)
    return stats, arr


def accepts_batch(runner, n: int) -> bool:
    lo, hi = runner.batch_range
    return n >= lo and (hi is None or n <= hi)


def measure_throughput(runner, pool: np.ndarray, cfg: BenchConfig) -> dict[str, float | None]:
    """Images per second at each batch size of ``cfg.batch_sizes`` (None: not accepted)."""
    out: dict[str, float | None] = {}
    for bs in cfg.batch_sizes:
        if not accepts_batch(runner, bs):
            out[str(bs)] = None
            continue
        reps = int(np.ceil(bs / len(pool)))
        xb = np.ascontiguousarray(np.concatenate([pool] * reps)[:bs])
        runner(xb)  # warm-up
        n = 0
        t0 = time.perf_counter()
        while True:
            runner(xb)
            n += 1
            el = time.perf_counter() - t0
            if el >= cfg.throughput_min_s and n >= 3:
                break
        out[str(bs)] = bs * n / el
    return out


def run_batches(runner, x: np.ndarray, batch: int = 64, transform=None) -> np.ndarray:
    """Logits of all of ``x`` in batches the runner accepts.

    Args:
        runner: a :class:`Runner`.
        x: float32 [N, C, H, W] inputs, or anything ``transform`` maps chunk by
            chunk to them (e.g. uint8 images and ``Preprocess.apply``, so a whole
            test split is never held as float32 at once).
        batch: the batch size, clipped to the runner's ``batch_range``. A last
            batch smaller than a static batch size is padded with copies of its
            last input, and the padding's outputs are dropped.

    Returns:
        float32 [N, classes].
    """
    lo, hi = runner.batch_range
    bs = max(lo, min(batch, hi or batch))
    out = []
    for i in range(0, len(x), bs):
        xb = x[i : i + bs] if transform is None else transform(x[i : i + bs])
        real = len(xb)
        if real < lo:
            xb = np.concatenate([xb, np.repeat(xb[-1:], lo - real, axis=0)])
        out.append(np.asarray(runner(np.ascontiguousarray(xb)), np.float32)[:real])
    return np.concatenate(out)


def measure_accuracy(
    runner, images: np.ndarray, labels: np.ndarray, preprocess, batch: int = 128
) -> dict:
    """Top-1 and top-5 (percent) over all ``images`` (uint8 [N, H, W, 3]).

    Returns:
        ``{"top1", "top5", "images", "predictions": int64 [N] list}``.
    """
    logits = run_batches(runner, images, batch, transform=preprocess.apply)
    # stable: tied logits (an INT8 output is quantized, so ties happen) resolve to the
    # lowest class index, as argmax and torch do
    top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    pred = top[:, 0]
    n = len(labels)
    return {
        "top1": float((pred == labels).mean() * 100),
        "top5": float((top == labels[:, None]).any(axis=1).sum() / n * 100),
        "images": int(n),
        "predictions": pred.astype(np.int64).tolist(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB).

    Reads ``VmHWM`` from ``/proc/self/status`` (the high-water mark of this
    process's own address space) on Linux. ``getrusage`` is only the fallback:
    after ``fork``/``vfork`` + ``exec`` its ``ru_maxrss`` can carry the parent's
    peak, which would make a per-target subprocess report the parent's memory.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def gpu_stats(runner) -> dict | None:
    """What a GPU runner reports about itself, or None for CPU runners.

    A runner may define ``gpu_report() -> dict`` (see
    :class:`edgekit.backends.gpu.GpuRunner`): device memory in use
    (``device_used_mb``) and, from CUDA events, the latency of the calls so far
    with and without the host-device copies (``with_copies_ms``/``compute_ms``).
    """
    report = getattr(runner, "gpu_report", None)
    if not callable(report):
        return None
    try:
        return dict(report())
    except Exception as e:  # a failing probe must not lose the row
        return {"error": f"{type(e).__name__}: {e}"}


def manifest_batch_range(manifest: dict) -> tuple[int, int | None]:
    """``(min, max)`` batch sizes from a manifest's ``io.batch`` (``(1, None)``: dynamic)."""
    b = (manifest.get("io") or {}).get("batch")
    return (b.get("min", 1), b.get("max")) if b else (1, None)


def check_batch_sizes(target: str, batch_range: tuple[int, int | None], batch_sizes) -> None:
    """Refuse batch sizes a static-batch artifact cannot take.

    Args:
        target: the target's name, for the message.
        batch_range: ``(min, max)`` of the runner or :func:`manifest_batch_range`.
        batch_sizes: the requested sizes.

    Raises:
        EdgekitError: a size outside the artifact's batch range.
    """
    lo, hi = batch_range
    bad = [n for n in batch_sizes if n < lo or (hi is not None and n > hi)]
    if bad:
        fixed = f"batch {lo}" if lo == hi else f"batch {lo}..{hi}"
        raise EdgekitError(
            f"{target} is a static-batch artifact ({fixed}) and cannot take "
            f"batch size {', '.join(map(str, bad))}",
            f"pass --batch-sizes {lo}, or rebuild it from an ONNX model with a dynamic batch axis",
        )


def available_cores() -> int:
    """CPU cores this process may run on: ``os.sched_getaffinity(0)`` where available
    (it honours taskset and container CPU sets), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads: int | None) -> list[str]:
    """Validate ``--threads``: between 1 and the cores here (:func:`available_cores`).

    More threads than cores only oversubscribes the CPU (thousands of threads
    brought a machine to a load average above 1,000), so it is refused.

    Returns:
        Warnings (none at present; kept for the callers' loop).

    Raises:
        EdgekitError: ``threads`` < 1, or more than the cores here (the cap is named).
    """
    if threads is None:
        return []
    if threads < 1:
        raise EdgekitError(f"--threads must be at least 1, got {threads}")
    cores = available_cores()
    if threads > cores:
        raise EdgekitError(
            f"--threads {threads} is more than the {cores} CPU cores available here",
            f"use --threads {cores} or fewer",
        )
    return []


def check_test_split(manifest: dict, test, where: str) -> None:
    """Refuse a test split the artifact cannot score, before any measuring.

    Compares the images' size (H, W) with the manifest's ``preprocess`` height and
    width, and the largest label with the artifact's class count (``classes``, else
    the last dimension of ``io.output_shape``). Fields that are missing or malformed
    are skipped here (the manifest schema checks their types).

    Raises:
        EdgekitError: the images have another size, or a label is beyond the classes.
    """
    name = manifest.get("target", "the artifact")
    try:
        size = (int(manifest["preprocess"]["height"]), int(manifest["preprocess"]["width"]))
    except (KeyError, TypeError, ValueError):
        size = None
    hw = tuple(int(v) for v in test.x.shape[1:3])
    if size is not None and hw != size:
        raise EdgekitError(
            f"the test images of {where} are {hw[0]}x{hw[1]} but {name} takes {size[0]}x{size[1]}",
            "give a test set of the artifact's input size (images are not resized here)",
        )
    classes = manifest.get("classes")
    n = len(classes) if isinstance(classes, list) and classes else None
    if n is None:
        try:
            n = int((manifest.get("io") or {})["output_shape"][-1])
        except (KeyError, TypeError, ValueError, IndexError):
            n = None
    if n is not None and len(test.y) and int(test.y.max()) >= n:
        raise EdgekitError(
            f"the test labels of {where} go up to {int(test.y.max())} but {name} has {n} classes",
            "give the test set the artifact was built for",
        )


def cpu_flags() -> dict:
    """CPU model and the ISA flags that matter for INT8 (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k in ("model name", "Model", "CPU part") and model in ("", platform.machine()):
                    model = v.strip()
                elif k in ("flags", "Features"):
                    flags.update(v.split())
    except OSError:
        pass
    isa = {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "neon": "asimd" in flags or "neon" in flags,
        "dotprod": "asimddp" in flags,
    }
    return {"cpu": model, "isa": isa}


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def gpu_names() -> list[str]:
    """GPU names from ``nvidia-smi`` (empty without one; never raises)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def environment(threads: int | None) -> dict:
    """What every result is recorded with: machine, CPU and ISA, GPU, versions, threads.

    Nothing heavy is imported; torch's thread count is recorded only when torch is
    already loaded in this process.
    """
    from edgekit.manifest import package_versions

    thread_env = {k: os.environ[k] for k in THREAD_VARS if k in os.environ}
    get_threads = getattr(sys.modules.get("torch"), "get_num_threads", None)
    if get_threads is not None:  # sys.modules may hold None for a blocked import
        thread_env["torch_num_threads"] = get_threads()
    return {
        "host": platform.node(),
        "system": platform.system(),
        "machine": platform.machine(),
        **cpu_flags(),
        "cores": os.cpu_count(),
        "gpus": gpu_names(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "threads": threads,
        "thread_env": thread_env,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def bench_artifact(artifact_dir, test_split, cfg: BenchConfig, threads: int | None = None) -> dict:
    """Measure one artifact directory: latency, throughput, accuracy, size, memory.

    Args:
        artifact_dir: a directory with ``manifest.json``.
        test_split: a :class:`edgekit.data.Split` (uint8 images) or None to skip accuracy.
        cfg: measurement rules.
        threads: intra-op threads of the backend (None: its default).

    Returns:
        A result row (see :func:`result_row`); ``status`` is ``ok``.

    Raises:
        EdgekitError: the artifact cannot be opened or run.
    """
    from edgekit.build import open_artifact
    from edgekit.preprocess import Preprocess

    runner, manifest = open_artifact(artifact_dir, threads)
    try:
        pre = Preprocess.from_dict(manifest["preprocess"])
        if test_split is not None:
            pool_imgs = test_split.x[:32]
        else:
            rng = np.random.default_rng(0)
            pool_imgs = rng.integers(0, 256, (32, pre.height, pre.width, 3), dtype=np.uint8)
        pool = pre.apply(pool_imgs)
        if not accepts_batch(runner, 1):
            raise EdgekitError(
                f"{manifest['target']} is a static-batch artifact (batch range "
                f"{runner.batch_range}) and cannot take batch 1, which latency is measured at"
            )
        if cfg.strict_batch:
            check_batch_sizes(manifest["target"], runner.batch_range, cfg.batch_sizes)
        try:
            lat, samples = measure_latency(runner, pool[:1], cfg)
            gpu = gpu_stats(runner)  # batch-1 latency with and without host-device copies
            thr = measure_throughput(runner, pool, cfg)
            acc = (
                measure_accuracy(runner, test_split.x, test_split.y, pre, cfg.accuracy_batch)
                if cfg.accuracy and test_split is not None
                else None
            )
        except EdgekitError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgekitError(f"{manifest['target']} failed while running: {first}") from None
        return result_row(
            manifest,
            status="ok",
            latency=lat,
            samples=samples,
            throughput=thr,
            accuracy=acc,
            threads=threads,
            device=runner.device,
            gpu=gpu,
        )
    finally:
        runner.close()


def result_row(
    manifest: dict | None,
    *,
    status: str,
    target: str | None = None,
    reason: str = "",
    latency=None,
    samples=None,
    throughput=None,
    accuracy=None,
    threads=None,
    device: str | None = None,
    gpu: dict | None = None,
    rss_mb: float | None = None,
) -> dict:
    """One report row. ``status``: ``ok``, ``failed`` or ``unavailable``.

    ``peak_rss_mb`` is this process's peak resident memory unless ``rss_mb`` is
    given; under :func:`bench_isolated` the process measured only this target.
    """
    m = manifest or {}
    row = {
        "target": target or m.get("target"),
        "backend": m.get("backend"),
        "precision": m.get("precision"),
        "status": status,
        "reason": reason,
        "device": device,
        "threads": threads,
        "size_mb": m.get("size_bytes", 0) / 1e6 if m else None,
        "latency_ms": latency,
        "latency_samples_ms": [round(float(v), 5) for v in samples]
        if samples is not None
        else None,
        "throughput_ips": throughput,
        "top1": accuracy["top1"] if accuracy else None,
        "top5": accuracy["top5"] if accuracy else None,
        "predictions": accuracy["predictions"] if accuracy else None,
        "peak_rss_mb": peak_rss_mb() if rss_mb is None else rss_mb,
        "gpu_mem_mb": (gpu or {}).get("device_used_mb"),
        "gpu": gpu,
        "fp32_nodes": fp32_node_count(m),
    }
    return row


def fp32_node_count(manifest: dict) -> int | None:
    """Nodes an INT8 artifact keeps in FP32 (``quantization.fp32_nodes``); None otherwise.

    Counts the compute nodes named by accuracy control when it ran
    (``accuracy_control.fp32_compute_nodes``, without the ReLU/reshape nodes that go
    with them) plus the user's and the unquantizable ones.
    """
    q = manifest.get("quantization") if manifest.get("precision") == "int8" else None
    if not isinstance(q, dict) or not isinstance(q.get("fp32_nodes"), list):
        return None

    def names(v) -> set[str]:  # a manifest is untrusted: strings only
        return {n for n in v if isinstance(n, str)} if isinstance(v, list) else set()

    acc = q.get("accuracy_control")
    acc = acc if isinstance(acc, dict) else {}
    extra = names(acc.get("fp32_nodes_added")) - names(acc.get("fp32_compute_nodes"))
    return len(names(q["fp32_nodes"]) - extra)


def failure_row(artifact_dir, exc: BaseException) -> dict:
    """The row of a target that could not be measured: ``unavailable`` or ``failed``.

    The target name comes from the manifest when it can be read, else from the
    directory name; the reason is the error's first line.
    """
    from pathlib import Path

    from edgekit.errors import UnavailableError

    manifest = None
    try:
        from edgekit.manifest import read_manifest

        manifest = read_manifest(artifact_dir, verify=False)
    except Exception:
        pass
    if isinstance(exc, EdgekitError):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    status = "unavailable" if isinstance(exc, UnavailableError) else "failed"
    row = result_row(
        manifest, status=status, target=None if manifest else Path(artifact_dir).name, reason=reason
    )
    row["peak_rss_mb"] = None
    return row


def _bench_worker(conn, artifact_dir, test_split, cfg, threads) -> None:
    """Child side of :func:`bench_isolated`: measure, send one row, exit."""
    try:
        row = bench_artifact(artifact_dir, test_split, cfg, threads)
    except BaseException as e:  # every failure becomes a row for the parent
        row = failure_row(artifact_dir, e)
    conn.send(row)
    conn.close()


def bench_isolated(
    artifact_dir, test_split, cfg: BenchConfig, threads: int | None = None, timeout_s=None
) -> dict:
    """:func:`bench_artifact` in a fresh process (``multiprocessing`` spawn).

    Each target then gets its own peak resident memory, an ONNX Runtime artifact
    is not measured in a process that has imported torch, and a runner that
    crashes the interpreter (segfault, abort, out of memory) becomes a
    ``failed`` row instead of ending the benchmark. Never raises for a target
    problem; scripts calling it need the usual ``if __name__ == "__main__":`` guard.

    Args:
        artifact_dir: a directory with ``manifest.json``.
        test_split: :class:`edgekit.data.Split` or None (sent to the child by pickle).
        cfg: measurement rules.
        threads: intra-op threads.
        timeout_s: kill the child after this many seconds (None: no limit).

    Returns:
        A result row with status ``ok``, ``failed`` or ``unavailable``.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_bench_worker, args=(send, str(artifact_dir), test_split, cfg, threads), daemon=True
    )
    proc.start()
    send.close()
    row = None
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while row is None:
            if recv.poll(0.2):
                try:
                    row = recv.recv()
                except EOFError:
                    break
            elif not proc.is_alive() and not recv.poll(0):
                break
            elif deadline is not None and time.monotonic() > deadline:
                proc.kill()
                proc.join()
                return failure_row(artifact_dir, EdgekitError(f"timed out after {timeout_s:.0f} s"))
    finally:
        recv.close()
    proc.join(timeout=30)
    if row is None:
        code = proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return failure_row(
            artifact_dir, EdgekitError(f"the runner process died ({how}) before reporting")
        )
    return row


def bench_many(
    dirs, test_split, cfg: BenchConfig, threads: int | None = None, isolate: bool = True, log=None
) -> list[dict]:
    """Measure several artifact directories; a failing one is a row, never an abort.

    Args:
        isolate: one fresh process per artifact (:func:`bench_isolated`).
        log: ``callable(str)`` for progress, or None.
    """
    rows = []
    for d in dirs:
        if log:
            log(f"benchmarking {d}")
        if isolate:
            row = bench_isolated(d, test_split, cfg, threads)
        else:
            try:
                row = bench_artifact(d, test_split, cfg, threads)
            except Exception as e:
                row = failure_row(d, e)
        if log and row["status"] != "ok":
            log(f"{row['target']}: {row['status']}: {row['reason']}")
        rows.append(row)
    return rows


def add_ratios(
    rows: list[dict], baseline: str = "pytorch-fp32", reference: str | None = None
) -> list[dict]:
    """Add speedup and size ratio against ``baseline`` and the top-1 drop (points).

    The drop is against ``reference`` (default: the baseline row), the FP32 model.
    """
    base = next((r for r in rows if r["target"] == baseline and r["status"] == "ok"), None)
    ref = next(
        (r for r in rows if r["target"] == (reference or baseline) and r["status"] == "ok"), base
    )
    for r in rows:
        ok = r["status"] == "ok"
        r["speedup"] = (
            base["latency_ms"]["p50"] / r["latency_ms"]["p50"]
            if ok and base and r["latency_ms"]
            else None
        )
        r["size_ratio"] = (
            r["size_mb"] / base["size_mb"] if ok and base and base["size_mb"] else None
        )
        r["top1_drop"] = (
            ref["top1"] - r["top1"]
            if ok and ref and ref["top1"] is not None and r["top1"] is not None
            else None
        )
    return rows
