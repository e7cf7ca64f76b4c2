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
    """

    warmup_queries: int = 20
    min_queries: int = 200
    min_duration_s: float = 10.0
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    throughput_min_s: float = 2.0
    accuracy: bool = True
    accuracy_batch: int = 128

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


def measure_accuracy(
    runner, images: np.ndarray, labels: np.ndarray, preprocess, batch: int = 128
) -> dict:
    """Top-1 and top-5 (percent) over all ``images`` (uint8 [N, H, W, 3]).

    Returns:
        ``{"top1", "top5", "images", "predictions": int64 [N] list}``.
    """
    lo, hi = runner.batch_range
    bs = max(lo, min(batch, hi or batch))
    preds, top5_hits = [], 0
    n = len(labels)
    for i in range(0, n, bs):
        xb = preprocess.apply(images[i : i + bs])
        real = len(xb)
        if real < lo or (hi is not None and real > hi):  # pad the last batch for static shapes
            xb = np.concatenate([xb, np.repeat(xb[-1:], bs - real, axis=0)])
        logits = np.asarray(runner(xb))[:real]
        top = np.argsort(-logits, axis=1)[:, :5]
        preds.append(top[:, 0])
        top5_hits += int((top == labels[i : i + real, None]).any(axis=1).sum())
    pred = np.concatenate(preds)
    return {
        "top1": float((pred == labels).mean() * 100),
        "top5": float(top5_hits / n * 100),
        "images": int(n),
        "predictions": pred.astype(np.int64).tolist(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def check_threads(threads: int | None) -> list[str]:
    """Validate ``--threads``; returns warnings.

    Raises:
        EdgekitError: threads < 1.
    """
    if threads is None:
        return []
    if threads < 1:
        raise EdgekitError(f"--threads must be at least 1, got {threads}")
    cores = os.cpu_count() or 1
    if threads > cores:
        return [
            f"--threads {threads} is more than the {cores} cores here; "
            "latency will suffer from oversubscription"
        ]
    return []


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


def environment(threads: int | None) -> dict:
    """What every result is recorded with: machine, ISA, versions, threads."""
    from edgekit.manifest import package_versions

    return {
        "machine": platform.machine(),
        **cpu_flags(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "threads": threads,
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
                f"{manifest['target']} does not accept batch 1 (batch range {runner.batch_range})"
            )
        try:
            lat, samples = measure_latency(runner, pool[:1], cfg)
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
) -> dict:
    """One report row. ``status``: ``ok``, ``failed`` or ``unavailable``."""
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
        "peak_rss_mb": peak_rss_mb(),
    }
    return row


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
