"""Where ort-cpu-int8's time goes, against OpenVINO INT8, and which session options help.

Given an artifact directory of ``ort-cpu-int8`` and one of ``ov-cpu-int8`` (as built by
``edgekit build`` or ``benchmarks/side_by_side.py``), at batch 1 and one thread:

1. ONNX Runtime's own profiler (``SessionOptions.enable_profiling``; ONNX Runtime docs,
   "Profiling tools"): per-operator-type time after graph optimization, the node count
   of each type in the optimized graph (``optimized_model_filepath``), and the nodes
   that still run as separate ``QuantizeLinear``/``DequantizeLinear`` or FP32 kernels;
2. OpenVINO's per-layer performance counters (``PERF_COUNT``) for the INT8 IR: time per
   layer type and the kernel (``exec_type``, e.g. ``brgconv_avx512_core_vnni_I8``);
3. session-option variants of ONNX Runtime against the current OrtRunner settings,
   measured in ``--rounds`` interleaved rounds: per-round ratio to the baseline, median
   and min-max.

Usage::

    uv run --no-sync python benchmarks/ort_profile.py WORK/artifacts/ort-cpu-int8 \\
        WORK/artifacts/ov-cpu-int8 [--rounds 7]

Writes ``benchmarks/results/ort_profile.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def session(path: Path, **cfg):
    """An ORT CPU session with OrtRunner's settings, changed by ``cfg``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = cfg.pop("level", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if cfg.pop("no_arena", False):
        so.enable_cpu_mem_arena = False
    if cfg.pop("no_mem_pattern", False):
        so.enable_mem_pattern = False
    if "profile" in cfg:
        so.enable_profiling = True
        so.profile_file_prefix = cfg.pop("profile")
    if "optimized" in cfg:
        so.optimized_model_filepath = cfg.pop("optimized")
    for k, v in cfg.pop("entries", {}).items():
        so.add_session_config_entry(k, v)
    assert not cfg, cfg
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_profile(path: Path, x: np.ndarray, runs: int) -> dict:
    """Per-op-type time (us per inference) and the optimized graph's op counts."""
    import onnx

    with tempfile.TemporaryDirectory() as td:
        opt = Path(td) / "opt.onnx"
        s = session(path, profile=str(Path(td) / "prof"), optimized=str(opt))
        name = s.get_inputs()[0].name
        for _ in range(10 + runs):
            s.run(None, {name: x})
        trace = json.loads(Path(s.end_profiling()).read_text())
        counts = collections.Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    per_type = collections.defaultdict(list)
    per_node = collections.defaultdict(list)
    for ev in trace:
        if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time"):
            continue
        op = ev["args"].get("op_name", "?")
        per_type[op].append(ev["dur"])
        per_node[(ev["name"][: -len("_kernel_time")], op)].append(ev["dur"])
    n_inf = max(len(v) for v in per_node.values()) if per_node else 1
    # drop the warm-up runs: keep each node's last ``runs`` samples
    type_us = collections.Counter()
    for (_node, op), d in per_node.items():
        type_us[op] += float(np.median(d[-runs:]))
    total = sum(type_us.values())
    return {
        "runs_profiled": n_inf,
        "total_kernel_us_per_inference": round(total, 1),
        "by_op_type_us": {k: round(v, 1) for k, v in type_us.most_common()},
        "by_op_type_share": {k: round(v / total, 3) for k, v in type_us.most_common()},
        "optimized_graph_op_counts": dict(counts.most_common()),
    }


def ov_profile(xml: Path, x: np.ndarray, runs: int) -> dict:
    """OpenVINO per-layer-type time (us per inference) and the kernels it picked."""
    import openvino as ov

    core = ov.Core()
    cfg = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": 1,
        "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": True,
    }
    c = core.compile_model(core.read_model(str(xml)), "CPU", cfg)
    r = c.create_infer_request()
    acc = collections.defaultdict(list)
    kernels = collections.Counter()
    for i in range(10 + runs):
        r.infer({0: x})
        if i < 10:
            continue
        per = collections.Counter()
        for p in r.get_profiling_info():
            if p.status != p.Status.EXECUTED:
                continue
            per[p.node_type] += p.real_time.total_seconds() * 1e6
            if i == 10:
                kernels[f"{p.node_type}: {p.exec_type}"] += 1
        for k, v in per.items():
            acc[k].append(v)
    med = {k: float(np.median(v)) for k, v in acc.items()}
    total = sum(med.values())
    return {
        "total_us_per_inference": round(total, 1),
        "by_layer_type_us": {k: round(v, 1) for k, v in sorted(med.items(), key=lambda t: -t[1])},
        "kernels": dict(kernels.most_common()),
    }


def variants():
    """Session-option variants to try against the current OrtRunner settings."""
    import onnxruntime as ort

    return {
        "baseline (OrtRunner now)": {},
        "no spinning": {"entries": {"session.intra_op.allow_spinning": "0"}},
        "no CPU arena": {"no_arena": True},
        "no memory pattern": {"no_mem_pattern": True},
        "EXTENDED optimization": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED},
        "BASIC optimization": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC},
        "denormals as zero": {"entries": {"session.set_denormal_as_zero": "1"}},
    }


def p50_ms(s, name, x, seconds: float) -> float:
    t_end, ts = time.perf_counter() + seconds, []
    for _ in range(5):
        s.run(None, {name: x})
    while time.perf_counter() < t_end or len(ts) < 30:
        t0 = time.perf_counter()
        s.run(None, {name: x})
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def option_sweep(path: Path, x: np.ndarray, rounds: int, seconds: float) -> dict:
    """Interleaved rounds: every variant's p50 per round and its ratio to the baseline."""
    sessions = {k: session(path, **v) for k, v in variants().items()}
    name = next(iter(sessions.values())).get_inputs()[0].name
    keys = list(sessions)
    p50 = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            p50[k].append(p50_ms(sessions[k], name, x, seconds))
        print(f"round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    base = p50[keys[0]]
    out = {}
    for k in keys:
        ratio = [v / b for v, b in zip(p50[k], base, strict=True)]
        out[k] = {
            "p50_ms": round(statistics.median(p50[k]), 3),
            "ratio_to_baseline": round(statistics.median(ratio), 3),
            "ratio_range": [round(min(ratio), 3), round(max(ratio), 3)],
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ort_artifact", type=Path, help="an ort-cpu-int8 artifact directory")
    ap.add_argument("ov_artifact", type=Path, nargs="?", help="an ov-cpu-int8 artifact directory")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-seconds", type=float, default=1.5)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ort_profile")
    a = ap.parse_args(argv)
    man = json.loads((a.ort_artifact / "manifest.json").read_text())
    shape = [d if isinstance(d, int) else 1 for d in man["io"]["input_shape"]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    from edgekit.harness import environment

    env = environment(1)
    res = {
        "environment": env,
        "load_average_start": os.getloadavg(),
        "ort": ort_profile(a.ort_artifact / man["artifact"], x, a.runs),
    }
    if a.ov_artifact:
        res["openvino"] = ov_profile(a.ov_artifact / "model.xml", x, a.runs)
    res["session_options"] = option_sweep(
        a.ort_artifact / man["artifact"], x, a.rounds, a.round_seconds
    )
    res["load_average_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.out}.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: v for k, v in res.items() if k != "environment"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
