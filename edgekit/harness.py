"""The uniform benchmark harness: every target is measured by the same code.

It drives :class:`edgekit.backends.base.Runner` objects only and never
branches on the backend. The rules follow MLPerf Inference's SingleStream
scenario (LoadGen): warm-up first, then queries of batch 1 are issued one after
another until both a minimum query count and a minimum duration are reached;
latency percentiles come from all timed queries. Throughput is measured per
batch size, and accuracy in a separate pass over the whole test split.
"""

from __future__ import annotations

import contextlib
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
        rounds: the batch-1 latency runs in this many interleaved rounds: in each
            round every target measures ``min_queries / rounds`` queries and
            ``min_duration_s / rounds`` seconds, the order rotating every round
            (as ``benchmarks/side_by_side.py`` does), so a change of the machine's
            load hits every target alike.
        accuracy_images: score only the first N test images (None: all of them).
    """

    warmup_queries: int = 20
    min_queries: int = 200
    min_duration_s: float = 10.0
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    throughput_min_s: float = 2.0
    accuracy: bool = True
    accuracy_batch: int = 128
    strict_batch: bool = False
    rounds: int = 5
    accuracy_images: int | None = None

    @classmethod
    def quick(cls) -> BenchConfig:
        """Short rules for tests and demos (numbers are indicative only)."""
        return cls(
            warmup_queries=5,
            min_queries=30,
            min_duration_s=0.5,
            batch_sizes=(1, 32),
            throughput_min_s=0.3,
            rounds=3,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def latency_stats(samples_ms: np.ndarray) -> dict:
    """min, mean, p50, p90, p99, max (ms), coefficient of variation (``cv``, and
    ``cv_p99`` over the samples up to p99), count.

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
    # the CV of the samples up to p99: a handful of outliers (a page fault, a timer tick)
    # inflate the plain CV of sub-millisecond latencies without the machine being busy
    core = s[s <= out["p99"]]
    out["cv_p99"] = float(core.std() / core.mean()) if core.size and core.mean() > 0 else 0.0
    out["queries"] = int(s.size)
    return out


def measure_latency(
    runner,
    x1: np.ndarray,
    cfg: BenchConfig,
    clock=time.perf_counter,
    *,
    warmup: int | None = None,
    min_queries: int | None = None,
    min_duration_s: float | None = None,
) -> tuple[dict, np.ndarray]:
    """SingleStream latency at batch 1.

    Args:
        runner: a :class:`Runner`.
        x1: float32 [1, C, H, W].
        cfg: the stopping rules.
        clock: seconds as float (injectable for tests).
        warmup, min_queries, min_duration_s: override ``cfg``'s (one round of
            :func:`bench_many` measures a share of the rules).

    Returns:
        ``(latency_stats(...) plus "duration_s", raw samples in ms)``.
    """
    warm = cfg.warmup_queries if warmup is None else warmup
    need_q = cfg.min_queries if min_queries is None else min_queries
    need_s = cfg.min_duration_s if min_duration_s is None else min_duration_s
    for _ in range(warm):
        runner(x1)
    reset = getattr(runner, "reset_stats", None)  # e.g. a GPU runner's CUDA-event timings
    if callable(reset) and warmup is None:
        reset()
    samples = []
    start = clock()
    while True:
        t0 = clock()
        runner(x1)
        t1 = clock()
        samples.append((t1 - t0) * 1e3)
        if len(samples) >= need_q and t1 - start >= need_s:
            break
    arr = np.asarray(samples)
    stats = latency_stats(arr)
    stats["duration_s"] = float(clock() - start)
    return stats, arr


#: A row is flagged ``noisy`` when its batch-1 latency samples up to p99 have a
#: coefficient of variation above this (std / mean; ``cv_p99`` of :func:`latency_stats`) ...
NOISY_CV = 0.25
#: ... or a p90 more than this many times its p50 ...
NOISY_P90_P50 = 1.5
#: ... or per-round p50s whose largest is more than this many times the smallest.
NOISY_ROUND_SPREAD = 1.3


def noise_flags(latency: dict) -> dict:
    """Whether a row's latency says the machine was noisy while it was measured.

    Args:
        latency: :func:`latency_stats` output, optionally with ``rounds_p50`` (ms).

    Returns:
        ``{"noisy": bool, "why": [str], "cv", "p90_p50", "round_spread"}``; the
        thresholds are :data:`NOISY_CV`, :data:`NOISY_P90_P50` and
        :data:`NOISY_ROUND_SPREAD`.
    """
    # the trimmed CV where recorded (rows measured before it existed: the plain one)
    cv = float(latency.get("cv_p99", latency.get("cv")) or 0.0)
    p50, p90 = latency.get("p50") or 0.0, latency.get("p90") or 0.0
    ratio = p90 / p50 if p50 > 0 else None
    rp = [v for v in latency.get("rounds_p50") or [] if v and v > 0]
    spread = max(rp) / min(rp) if len(rp) > 1 else None
    why = []
    if cv > NOISY_CV:
        why.append(f"CV {cv:.2f} > {NOISY_CV}")
    if ratio is not None and ratio > NOISY_P90_P50:
        why.append(f"p90/p50 {ratio:.2f} > {NOISY_P90_P50}")
    if spread is not None and spread > NOISY_ROUND_SPREAD:
        why.append(f"round p50s differ {spread:.2f}x > {NOISY_ROUND_SPREAD}x")
    return {"noisy": bool(why), "why": why, "cv": cv, "p90_p50": ratio, "round_spread": spread}


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


#: ``platform.machine()`` names of x86 CPUs (lower case)
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def cpuid_features() -> dict[str, bool] | None:
    """x86 features as this process's CPUID and OS report them (numpy's runtime CPU
    dispatch, which reads CPUID and XGETBV as ONNX Runtime's MLAS does), e.g.
    ``{"AVX2": True, "AVX512F": False, "AVX512VNNI": False, ...}``; None off x86 or when
    numpy does not expose them."""
    if platform.machine().lower() not in X86:
        return None
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as f
        except ImportError:
            return None
    return dict(f) if isinstance(f, dict) and "AVX2" in f else None


def cpu_flags() -> dict:
    """CPU model and the ISA flags that matter for INT8.

    From /proc/cpuinfo, overridden on x86 by what this process's CPUID reports
    (:func:`cpuid_features`) where the two can differ: the kernels dispatch on CPUID,
    which an OS that disables AVX-512, a VM, or an emulator (``qemu-x86_64 -cpu EPYC``:
    AVX2 only, on any host) can make narrower than the host's /proc/cpuinfo. AVX-VNNI
    (the VEX form) comes from /proc/cpuinfo (numpy has no flag for it), and only where
    the CPUID view is not narrower than /proc/cpuinfo on AVX-512.
    """
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
    f = cpuid_features()
    if f is not None:
        isa["avx2"] = bool(f.get("AVX2"))
        isa["avx512"] = bool(f.get("AVX512F"))
        # AVX-VNNI is trusted from /proc/cpuinfo only where CPUID agrees with it on
        # AVX-512, i.e. where nothing masks the process's view of the host CPU
        masked = isa["avx512"] != ("avx512f" in flags)
        isa["vnni"] = bool(f.get("AVX512VNNI")) or (
            "avx_vnni" in flags and isa["avx2"] and not masked
        )
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


def machine_load() -> dict:
    """The machine's load now: ``{"loadavg": [1, 5, 15 min], "cpu_mhz": mean, "cpu_mhz_min",
    "cpu_mhz_max"}``; a figure this system does not expose is None.

    Load average from :func:`os.getloadavg`; the clock from ``scaling_cur_freq`` in
    ``/sys/devices/system/cpu/cpu*/cpufreq`` (kHz), else ``cpu MHz`` in ``/proc/cpuinfo``.
    """
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    mhz: list[float] = []
    import glob

    for f in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            with open(f) as fh:
                mhz.append(int(fh.read().strip()) / 1000.0)
        except (OSError, ValueError):
            pass
    if not mhz:
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    k, _, v = line.partition(":")
                    if k.strip() == "cpu MHz":
                        mhz.append(float(v))
        except (OSError, ValueError):
            pass
    return {
        "loadavg": load,
        "cpu_mhz": round(sum(mhz) / len(mhz), 1) if mhz else None,
        "cpu_mhz_min": round(min(mhz), 1) if mhz else None,
        "cpu_mhz_max": round(max(mhz), 1) if mhz else None,
    }


def environment(threads: int | None, load: dict | None = None) -> dict:
    """What every result is recorded with: machine, CPU and ISA, GPU, versions, threads.

    Args:
        threads: the ``--threads`` of the run.
        load: ``{"start": machine_load(), "end": machine_load()}`` around the
            measurement (:func:`machine_load`); stored as ``environment.load``.

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
        "load": load or {"end": machine_load()},
    }


class _Session:
    """One opened artifact, measured in steps: :meth:`latency_round` once per round,
    then :meth:`finish` (throughput, accuracy, the row). Lives in the child process of
    :func:`bench_many` (or in this process with ``isolate=False``)."""

    def __init__(self, artifact_dir, test_split, cfg: BenchConfig, threads: int | None):
        from edgekit.build import open_artifact
        from edgekit.preprocess import Preprocess

        self.cfg, self.threads, self.test = cfg, threads, test_split
        self.runner, self.manifest = open_artifact(artifact_dir, threads)
        self.artifact_dir = artifact_dir
        self.target = self.manifest["target"]
        self.samples: list[np.ndarray] = []
        self.rounds_p50: list[float] = []
        self.duration_s = 0.0
        try:
            self.pre = Preprocess.from_dict(self.manifest["preprocess"])
            if test_split is not None:
                pool_imgs = test_split.x[:32]
            else:
                rng = np.random.default_rng(0)
                pool_imgs = rng.integers(
                    0, 256, (32, self.pre.height, self.pre.width, 3), dtype=np.uint8
                )
            self.pool = self.pre.apply(pool_imgs)
            if not accepts_batch(self.runner, 1):
                raise EdgekitError(
                    f"{self.target} is a static-batch artifact (batch range "
                    f"{self.runner.batch_range}) and cannot take batch 1, which latency is "
                    "measured at"
                )
            if cfg.strict_batch:
                check_batch_sizes(self.target, self.runner.batch_range, cfg.batch_sizes)
        except BaseException:
            self.close()
            raise

    def _guard(self, fn):
        try:
            return fn()
        except EdgekitError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgekitError(f"{self.target} failed while running: {first}") from None

    def latency_round(self, i: int, rounds: int) -> float:
        """Round ``i`` of ``rounds``: its share of the stopping rules. Returns its p50 (ms)."""
        cfg = self.cfg
        first = i == 0
        warm = cfg.warmup_queries if first else min(cfg.warmup_queries, 5)
        stats, arr = self._guard(
            lambda: measure_latency(
                self.runner,
                self.pool[:1],
                cfg,
                warmup=None if first else warm,
                min_queries=-(-cfg.min_queries // rounds),
                min_duration_s=cfg.min_duration_s / rounds,
            )
        )
        self.samples.append(arr)
        self.rounds_p50.append(stats["p50"])
        self.duration_s += stats["duration_s"]
        return stats["p50"]

    def finish(self) -> dict:
        cfg, test = self.cfg, self.test
        if not self.samples:
            self.latency_round(0, 1)
        samples = np.concatenate(self.samples)
        lat = latency_stats(samples)
        lat["duration_s"] = self.duration_s
        lat["rounds"] = len(self.rounds_p50)
        lat["rounds_p50"] = [round(v, 5) for v in self.rounds_p50]
        gpu = gpu_stats(self.runner)  # batch-1 latency with and without host-device copies
        thr = self._guard(lambda: measure_throughput(self.runner, self.pool, cfg))
        acc = None
        if cfg.accuracy and test is not None:
            n = (
                len(test.y)
                if cfg.accuracy_images is None
                else min(cfg.accuracy_images, len(test.y))
            )
            acc = self._guard(
                lambda: measure_accuracy(
                    self.runner, test.x[:n], test.y[:n], self.pre, cfg.accuracy_batch
                )
            )
        row = result_row(
            self.manifest,
            status="ok",
            latency=lat,
            samples=samples,
            throughput=thr,
            accuracy=acc,
            threads=self.threads,
            device=self.runner.device,
            gpu=gpu,
            zip_mb=artifact_zip_mb(self.artifact_dir, self.manifest),
        )
        if acc is not None and cfg.accuracy_images is not None:
            row["accuracy_images"] = acc["images"]  # a capped pass: the table says so
        return row

    def close(self) -> None:
        runner, self.runner = getattr(self, "runner", None), None
        if runner is not None:
            runner.close()


def bench_artifact(artifact_dir, test_split, cfg: BenchConfig, threads: int | None = None) -> dict:
    """Measure one artifact directory: latency, throughput, accuracy, size, memory.

    Args:
        artifact_dir: a directory with ``manifest.json``.
        test_split: a :class:`edgekit.data.Split` (uint8 images) or None to skip accuracy.
        cfg: measurement rules (its ``rounds`` run back to back here: one target).
        threads: intra-op threads of the backend (None: its default).

    Returns:
        A result row (see :func:`result_row`); ``status`` is ``ok``.

    Raises:
        EdgekitError: the artifact cannot be opened or run.
    """
    s = _Session(artifact_dir, test_split, cfg, threads)
    try:
        rounds = max(1, cfg.rounds)
        for i in range(rounds):
            s.latency_round(i, rounds)
        return s.finish()
    finally:
        s.close()


def deflated_bytes(paths, level: int = 6, chunk: int = 1 << 20) -> int:
    """Bytes of ``paths`` once DEFLATE-compressed, as ``zip`` stores them (zipfile's
    ``ZIP_DEFLATED``, zlib level 6, its default), without the archive's headers (about
    100 bytes per file). RFC 1951; streamed, so a large artifact is never held whole.

    Zeros (sparsity) and repeated values (clustering) shrink here while the dense
    backends still load and run every weight: this is the storage/download size such
    techniques buy, not a runtime size.

    Raises:
        OSError: a file cannot be read.
    """
    import zlib

    total = 0
    for p in paths:
        z = zlib.compressobj(level, zlib.DEFLATED, -15)
        with open(p, "rb") as f:
            while block := f.read(chunk):
                total += len(z.compress(block))
        total += len(z.flush())
    return total


def artifact_zip_mb(artifact_dir, manifest: dict) -> float | None:
    """:func:`deflated_bytes` of an artifact's hashed files in MB (1e6 bytes); None
    when a file cannot be read (the row then shows ``-``)."""
    from edgekit.manifest import artifact_path

    try:
        paths = [artifact_path(artifact_dir, manifest, n) for n in sorted(manifest["files"])]
        return deflated_bytes(paths) / 1e6
    except (OSError, EdgekitError, KeyError, TypeError):
        return None


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
    zip_mb: float | None = None,
) -> dict:
    """One report row. ``status``: ``ok``, ``failed`` or ``unavailable``.

    ``size_mb`` is the artifact's files as stored (``size_bytes`` of the manifest);
    ``zip_mb`` the same files deflated (:func:`artifact_zip_mb`), where sparsity and
    weight clustering show.

    ``peak_rss_mb`` is this process's peak resident memory (under
    :func:`bench_many` a process that measured only this target) unless ``rss_mb``
    is given; a row that is not ``ok`` has none (this process never ran it, so its
    peak would be the parent's). An ``ok`` row with latency carries ``noisy`` and
    ``noise`` (:func:`noise_flags`).
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
        "zip_mb": zip_mb,
        "latency_ms": latency,
        "latency_samples_ms": [round(float(v), 5) for v in samples]
        if samples is not None
        else None,
        "throughput_ips": throughput,
        "top1": accuracy["top1"] if accuracy else None,
        "top5": accuracy["top5"] if accuracy else None,
        "predictions": accuracy["predictions"] if accuracy else None,
        "peak_rss_mb": (peak_rss_mb() if rss_mb is None else rss_mb) if status == "ok" else None,
        "gpu_mem_mb": (gpu or {}).get("device_used_mb"),
        "gpu": gpu,
        "fp32_nodes": fp32_node_count(m),
    }
    if status == "ok" and latency:
        flags = noise_flags(latency)
        row["noisy"] = flags.pop("noisy")
        row["noise"] = flags
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
    return result_row(
        manifest, status=status, target=None if manifest else Path(artifact_dir).name, reason=reason
    )


def _bench_worker(conn, artifact_dir, test_split, cfg, threads) -> None:
    """Child side of :func:`bench_many`: open the artifact, then obey the parent.

    Messages to the parent: ``("ready", None)``, ``("p50", ms)`` after each latency
    round, and finally ``("row", row)`` (after ``finish`` or on any failure).
    """
    session = None
    try:
        session = _Session(artifact_dir, test_split, cfg, threads)
        conn.send(("ready", None))
        while True:
            cmd = conn.recv()
            if cmd[0] == "round":
                conn.send(("p50", session.latency_round(cmd[1], cmd[2])))
            else:  # "finish"
                conn.send(("row", session.finish()))
                break
    except BaseException as e:  # every failure becomes a row for the parent
        with contextlib.suppress(OSError, EOFError):
            conn.send(("row", failure_row(artifact_dir, e)))
    finally:
        if session is not None:
            session.close()
        conn.close()


class _Child:
    """The parent's handle on one :func:`_bench_worker` process."""

    def __init__(self, ctx, artifact_dir, test_split, cfg, threads):
        self.dir = artifact_dir
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_bench_worker,
            args=(child, str(artifact_dir), test_split, cfg, threads),
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.row: dict | None = None  # set once the child has answered with a row
        self.elapsed = 0.0

    def ask(self, cmd, timeout_s: float | None):
        """Send ``cmd`` (None: only wait) and return the answer ``(kind, value)``;
        a dead or silent child becomes a failed row."""
        t0 = time.monotonic()
        try:
            if cmd is not None:
                self.conn.send(cmd)
            deadline = None if timeout_s is None else t0 + timeout_s
            while True:
                if self.conn.poll(0.2):
                    msg = self.conn.recv()
                    break
                if not self.proc.is_alive() and not self.conn.poll(0):
                    code = self.proc.exitcode
                    how = (
                        f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    )
                    msg = (
                        "row",
                        failure_row(
                            self.dir,
                            EdgekitError(f"the runner process died ({how}) before reporting"),
                        ),
                    )
                    break
                if deadline is not None and time.monotonic() > deadline:
                    self.proc.kill()
                    msg = (
                        "row",
                        failure_row(self.dir, EdgekitError(f"timed out after {timeout_s:.0f} s")),
                    )
                    break
        except (OSError, EOFError, BrokenPipeError):
            msg = (
                "row",
                failure_row(self.dir, EdgekitError("the runner process died before reporting")),
            )
        self.elapsed += time.monotonic() - t0
        if msg[0] == "row":
            self.row = msg[1]
        return msg

    def close(self) -> None:
        self.conn.close()
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class _Local:
    """In-process counterpart of :class:`_Child` (``isolate=False``)."""

    def __init__(self, artifact_dir, test_split, cfg, threads):
        self.dir, self.row, self.elapsed, self.session = artifact_dir, None, 0.0, None
        t0 = time.monotonic()
        try:
            self.session = _Session(artifact_dir, test_split, cfg, threads)
        except Exception as e:
            self.row = failure_row(artifact_dir, e)
        self.elapsed += time.monotonic() - t0

    def ask(self, cmd, timeout_s=None):
        if self.row is not None:
            return ("row", self.row)
        if cmd is None:
            return ("ready", None)
        t0 = time.monotonic()
        try:
            if cmd[0] == "round":
                msg = ("p50", self.session.latency_round(cmd[1], cmd[2]))
            else:
                msg = ("row", self.session.finish())
        except Exception as e:
            msg = ("row", failure_row(self.dir, e))
        self.elapsed += time.monotonic() - t0
        if msg[0] == "row":
            self.row = msg[1]
            self.close()
        return msg

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def row_summary(row: dict, elapsed_s: float | None = None) -> str:
    """One log line for a finished row, e.g.
    ``ort-cpu: ok  top-1 91.73%  p50 0.74 ms  p90 0.80 ms  (12.3 s)``."""
    parts = [f"{row.get('target')}: {row.get('status')}"]
    if row.get("status") == "ok":
        if row.get("top1") is not None:
            parts.append(f"top-1 {row['top1']:.2f}%")
        lat = row.get("latency_ms") or {}
        if lat.get("p50") is not None:
            parts.append(f"p50 {lat['p50']:.3g} ms  p90 {lat['p90']:.3g} ms")
        if row.get("noisy"):
            parts.append("NOISY (" + "; ".join((row.get("noise") or {}).get("why") or []) + ")")
    elif row.get("reason"):
        parts[0] += f" ({(str(row['reason']).splitlines() or [''])[0]})"
    if elapsed_s is not None:
        parts.append(f"({elapsed_s:.1f} s)")
    return "  ".join(parts)


def bench_isolated(
    artifact_dir, test_split, cfg: BenchConfig, threads: int | None = None, timeout_s=None
) -> dict:
    """:func:`bench_artifact` in a fresh process (``multiprocessing`` spawn); see
    :func:`bench_many`, of which this is the one-artifact case. Never raises for a
    target problem."""
    return bench_many([artifact_dir], test_split, cfg, threads, isolate=True, timeout_s=timeout_s)[
        0
    ]


def bench_many(
    dirs,
    test_split,
    cfg: BenchConfig,
    threads: int | None = None,
    isolate: bool = True,
    log=None,
    timeout_s: float | None = None,
) -> list[dict]:
    """Measure several artifact directories, interleaved; a failing one is a row.

    Every artifact is opened first (with ``isolate``: each in its own fresh
    ``multiprocessing`` spawn process, so each gets its own peak resident memory,
    an ONNX Runtime artifact is not measured in a process that imported torch, and
    a runner that crashes the interpreter becomes a ``failed`` row). Then the
    batch-1 latency runs in ``cfg.rounds`` rounds; in each round every target
    measures its share of the stopping rules, one after another, the order rotating
    by one every round, so slow changes of the machine's load hit all targets
    alike (the method of ``benchmarks/side_by_side.py``). Last, target by target,
    throughput and the accuracy pass; each row is logged as it finishes, with the
    seconds spent on it. Scripts calling it need the ``if __name__ == "__main__":``
    guard.

    Args:
        isolate: one fresh process per artifact (else all in this process).
        log: ``callable(str)`` for progress, or None.
        timeout_s: kill an artifact's process after this many seconds for one step.

    Returns:
        One row per directory, in the order given.
    """
    import multiprocessing as mp

    dirs = list(dirs)
    t_start = time.monotonic()
    ctx = mp.get_context("spawn") if isolate else None
    handles = []
    try:
        for d in dirs:
            if log:
                log(f"opening {d}")
            h = (
                _Child(ctx, d, test_split, cfg, threads)
                if isolate
                else _Local(d, test_split, cfg, threads)
            )
            handles.append(h)
        for h in handles:  # the children load in parallel; wait for each to be ready
            if h.row is None:
                h.ask(None, timeout_s)
            if h.row is not None and log:
                log(row_summary(h.row, h.elapsed))
        rounds = max(1, cfg.rounds)
        live = [h for h in handles if h.row is None]
        for i in range(rounds):
            k = i % max(1, len(live))
            for h in live[k:] + live[:k]:
                if h.row is None:
                    h.ask(("round", i, rounds), timeout_s)
                    if h.row is not None and log:
                        log(row_summary(h.row, h.elapsed))
            if log and live:
                log(
                    f"latency round {i + 1}/{rounds} done "
                    f"({time.monotonic() - t_start:.1f} s so far)"
                )
        for h in live:
            if h.row is None:
                h.ask(("finish",), timeout_s)
                if log:
                    log(row_summary(h.row, h.elapsed))
    finally:
        for h in handles:
            h.close()
    return [h.row for h in handles]


#: the row note of a compressed model's rows (``note``), by technique and kind of row
SPARSE_DENSE_NOTE = (
    "{what}: no backend here runs sparse kernels, so this row runs the zeros as dense "
    "weights; its latency is the dense model's, measured as such (the saving shows in zip MB)"
)
SPARSE_TRT_NOTE = (
    "2:4 sparsity: TensorRT's sparse path (BuilderFlag.SPARSE_WEIGHTS, trtexec --sparsity) "
    "is unverified here: no TensorRT on this machine, and edgekit builds the engine without "
    "that flag"
)
UNSTRUCTURED_TRT_NOTE = (
    "unstructured sparsity: TensorRT's sparse kernels take only the 2:4 pattern; this "
    "engine runs the zeros as dense weights"
)
CLUSTER_NOTE = (
    "weight clustering ({bits} bits): the backends here run the shared values as dense "
    "float weights, so latency is the dense model's (the saving shows in zip MB and the "
    "codebook size)"
)


def _is_tensorrt(row: dict) -> bool:
    t = str(row.get("target") or "")
    return row.get("backend") == "tensorrt" or t.startswith("trt-") or t == "ort-trt"


def compression_note(row: dict, compression: dict | None) -> str | None:
    """What a row of a compressed model must say about its latency, or None.

    ``compression`` is the work directory's ``compression`` record (from the
    checkpoint, :func:`edgekit.compress.driver.compress_checkpoint`). Weight sparsity
    (``unstructured``, ``2:4``) and clustering (``cluster``) keep every layer's shape, so a
    dense backend runs the same arithmetic: its measured row carries that note. A TensorRT
    row (any status) says that TensorRT's 2:4 path is unverified here (or, for
    unstructured sparsity, that TensorRT does not take it). Techniques that change
    shapes (channel pruning, low-rank) get no note: their latency is their own.
    """
    if not isinstance(compression, dict):
        return None
    tech = compression.get("technique")
    ok = row.get("status") == "ok"
    if tech in ("unstructured", "2:4"):
        if _is_tensorrt(row):
            return SPARSE_TRT_NOTE if tech == "2:4" else UNSTRUCTURED_TRT_NOTE
        what = "2:4 sparse weights" if tech == "2:4" else "unstructured sparse weights"
        return SPARSE_DENSE_NOTE.format(what=what) if ok else None
    if tech == "cluster" and ok:
        bits = compression.get("bits", compression.get("level"))
        return CLUSTER_NOTE.format(bits=bits)
    return None


def add_compression_notes(rows: list[dict], compression: dict | None) -> list[dict]:
    """Set ``note`` on the rows :func:`compression_note` has a note for (in place)."""
    for r in rows:
        note = compression_note(r, compression)
        if note:
            r["note"] = note
    return rows


def add_ratios(
    rows: list[dict], baseline: str = "pytorch-fp32", reference: str | None = None
) -> list[dict]:
    """Add speedup and size ratio against ``baseline`` and the top-1 drop (points).

    The drop is ``reference top-1 - row top-1`` (positive: a loss), against
    ``reference`` (default: the baseline row), the FP32 model. When both rows were
    measured in the same interleaved rounds (``latency_ms.rounds_p50`` of equal
    length), the speedup is the median of the per-round ratios ``baseline p50 /
    row p50`` and ``speedup_range`` their [min, max]; otherwise the ratio of p50s.
    """
    import statistics

    base = next((r for r in rows if r["target"] == baseline and r["status"] == "ok"), None)
    ref = next(
        (r for r in rows if r["target"] == (reference or baseline) and r["status"] == "ok"), base
    )
    for r in rows:
        ok = r["status"] == "ok"
        r["speedup"], r["speedup_range"] = None, None
        if ok and base and r["latency_ms"] and base["latency_ms"]:
            br = base["latency_ms"].get("rounds_p50") or []
            rr = r["latency_ms"].get("rounds_p50") or []
            if len(br) > 1 and len(br) == len(rr) and all(v > 0 for v in rr):
                ratios = [b / x for b, x in zip(br, rr, strict=True)]
                r["speedup"] = statistics.median(ratios)
                r["speedup_range"] = [min(ratios), max(ratios)]
            else:
                r["speedup"] = base["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        r["size_ratio"] = (
            r["size_mb"] / base["size_mb"] if ok and base and base["size_mb"] else None
        )
        r["top1_drop"] = (
            ref["top1"] - r["top1"]
            if ok and ref and ref["top1"] is not None and r["top1"] is not None
            else None
        )
    return rows
