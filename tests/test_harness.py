"""The benchmark harness: stopping rules, percentiles, failures as rows, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.harness import (
    BenchConfig,
    available_cores,
    bench_many,
    check_batch_sizes,
    check_threads,
    environment,
    latency_stats,
    measure_latency,
)


class FakeClock:
    """A clock that only moves when the fake runner 'computes'."""

    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeRunner:
    device = "cpu"
    batch_range = (1, None)

    def __init__(self, clock: FakeClock, seconds_per_call: float):
        self.clock, self.dt, self.calls = clock, seconds_per_call, 0

    def __call__(self, x):
        self.calls += 1
        self.clock.t += self.dt
        return np.zeros((len(x), 10), np.float32)


X1 = np.zeros((1, 3, 8, 8), np.float32)


def test_stopping_rule_duration_binds_when_queries_are_fast():
    clock = FakeClock()
    runner = FakeRunner(clock, 0.001)  # 1 ms per query: 200 queries take only 0.2 s
    cfg = BenchConfig(warmup_queries=7, min_queries=200, min_duration_s=10.0)
    stats, samples = measure_latency(runner, X1, cfg, clock=clock)
    # 10 s of 1 ms queries: the duration rule stops it, not the count
    assert len(samples) == pytest.approx(10_000, abs=1)
    assert stats["queries"] == len(samples) > 200
    assert runner.calls == 7 + len(samples)  # warm-up queries are not timed
    assert stats["duration_s"] >= 10.0
    np.testing.assert_allclose(samples, 1.0, rtol=1e-6)


def test_stopping_rule_query_count_binds_when_queries_are_slow():
    clock = FakeClock()
    runner = FakeRunner(clock, 0.25)  # 250 ms: 10 s is reached after 40 queries
    cfg = BenchConfig(warmup_queries=3, min_queries=200, min_duration_s=10.0)
    stats, samples = measure_latency(runner, X1, cfg, clock=clock)
    assert len(samples) == 200
    assert stats["duration_s"] == pytest.approx(50.0)
    assert stats["p50"] == pytest.approx(250.0)


def test_quick_config_is_shorter_but_keeps_both_rules():
    q, d = BenchConfig.quick(), BenchConfig()
    assert q.min_queries < d.min_queries and q.min_duration_s < d.min_duration_s
    assert q.min_queries > 0 and q.min_duration_s > 0
    assert d.min_queries == 200 and d.min_duration_s == 10.0
    assert d.batch_sizes == (1, 8, 32, 128)


def test_percentiles_match_numpy():
    rng = np.random.default_rng(1)
    s = rng.lognormal(0.0, 0.6, size=1237)
    st = latency_stats(s)
    for p in (50, 90, 99):
        assert st[f"p{p}"] == pytest.approx(np.percentile(s, p), rel=1e-12)
    assert st["min"] == s.min() and st["max"] == s.max()
    assert st["mean"] == pytest.approx(s.mean())
    assert st["cv"] == pytest.approx(s.std() / s.mean())
    assert st["queries"] == 1237
    with pytest.raises(ValueError):
        latency_stats(np.array([]))


def test_threads_validation():
    with pytest.raises(EdgekitError, match="at least 1"):
        check_threads(0)
    with pytest.raises(EdgekitError):
        check_threads(-2)
    assert check_threads(1) == []
    cores = available_cores()
    assert check_threads(cores) == []
    with pytest.raises(EdgekitError, match=f"more than the {cores} CPU cores.*--threads {cores}"):
        check_threads(cores + 1)
    with pytest.raises(EdgekitError, match="more than"):
        check_threads(10_000)


def test_static_batch_error_names_the_artifact_kind():
    check_batch_sizes("t", (1, None), [1, 8, 128])  # dynamic: fine
    check_batch_sizes("t", (8, 8), [8])
    with pytest.raises(EdgekitError, match="static-batch artifact \\(batch 1\\).*batch size 8, 32"):
        check_batch_sizes("t", (1, 1), [1, 8, 32])


def test_environment_record():
    env = environment(1)
    for key in ("cpu", "cores", "isa", "gpus", "versions", "threads", "thread_env", "host"):
        assert key in env
    assert set(env["isa"]) >= {"avx2", "avx512", "vnni", "neon"}
    assert env["threads"] == 1
    assert "numpy" in env["versions"]
    json.dumps(env)  # must be serializable as is


# ---------------------------------------------------------------------------
# Real artifacts (tiny model): failures become rows, per-process memory
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(tiny_workspace, tmp_path_factory):
    """A good ort-cpu artifact, a corrupt one, a static-batch one, one without manifest."""
    pytest.importorskip("onnxruntime")
    from edgekit.manifest import make_manifest, read_manifest, write_manifest
    from edgekit.pipeline import build

    good = build(tiny_workspace, "ort-cpu", force=True)
    gdir = tiny_workspace.artifact_dir("ort-cpu")
    root = tmp_path_factory.mktemp("arts")
    bad = root / "broken"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"this is not an onnx model")
    m = make_manifest(
        target={"name": "broken-ort", "backend": "onnxruntime", "precision": "fp32"},
        artifact="model.onnx",
        artifact_dir=bad,
        io=good["io"],
        preprocess=good["preprocess"],
        classes=good["classes"],
        source={},
    )
    write_manifest(bad, m)
    static = root / "static"
    shutil.copytree(gdir, static)
    ms = read_manifest(static)
    ms["io"]["batch"] = {"min": 1, "max": 1}
    ms["target"] = "static-ort"
    write_manifest(static, ms)
    empty = root / "no-manifest"
    empty.mkdir()
    return {"good": gdir, "bad": bad, "static": static, "empty": empty}


QUICK = BenchConfig(
    warmup_queries=2,
    min_queries=10,
    min_duration_s=0.05,
    batch_sizes=(1, 4),
    throughput_min_s=0.05,
)


def test_failing_targets_become_rows_and_do_not_abort(artifacts, tiny_npz):
    from edgekit.data import load_dataset

    test = load_dataset(f"npz:{tiny_npz}").test
    dirs = [artifacts["bad"], artifacts["good"], artifacts["empty"]]
    rows = bench_many(dirs, test, QUICK, threads=1, isolate=True)
    assert [r["status"] for r in rows] == ["failed", "ok", "failed"]
    assert rows[0]["target"] == "broken-ort"
    assert "cannot load" in rows[0]["reason"]
    assert rows[2]["target"] == "no-manifest" and "manifest.json" in rows[2]["reason"]
    ok = rows[1]
    assert ok["top1"] is not None and len(ok["predictions"]) == len(test)
    assert ok["latency_ms"]["queries"] >= 10
    assert set(ok["throughput_ips"]) == {"1", "4"}
    # measured in its own process: its peak memory is that process's, well under
    # what this pytest process (which imported torch for the fixture) holds
    from edgekit.harness import peak_rss_mb

    assert 0 < ok["peak_rss_mb"] < peak_rss_mb()


def test_static_batch_artifact_skips_or_refuses_sizes(artifacts):
    rows = bench_many([artifacts["static"]], None, QUICK, threads=1, isolate=False)
    assert rows[0]["status"] == "ok"
    assert rows[0]["throughput_ips"] == {"1": rows[0]["throughput_ips"]["1"], "4": None}
    strict = BenchConfig(**{**QUICK.to_dict(), "strict_batch": True})
    rows = bench_many([artifacts["static"]], None, strict, threads=1, isolate=False)
    assert rows[0]["status"] == "failed" and "static-batch" in rows[0]["reason"]


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_bad_input_is_one_error_line(artifacts, tmp_path):
    r = _cli("bench", "--artifact", artifacts["empty"], "--quick")
    assert r.returncode == 2 and "no manifest.json" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("bench", "--artifact", artifacts["good"], "--threads", "0")
    assert r.returncode == 2 and "--threads must be at least 1" in r.stderr
    r = _cli("bench", "--artifact", artifacts["static"], "--batch-sizes", "1,8", "--quick")
    assert r.returncode == 2 and "static-batch artifact" in r.stderr
    # several artifacts, one broken: a failed row, the others measured, exit status 1
    out = tmp_path / "b.json"
    r = _cli(
        "bench",
        "-a",
        artifacts["bad"],
        "-a",
        artifacts["good"],
        "--quick",
        "--threads",
        "1",
        "--min-duration",
        "0.05",
        "--batch-sizes",
        "1",
        "-o",
        out,
    )
    assert r.returncode == 1, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [x["status"] for x in rows] == ["failed", "ok"]
    assert "p50 ms" in r.stdout and "broken-ort" in r.stdout
