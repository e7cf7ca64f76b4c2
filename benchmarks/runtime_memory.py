"""Peak resident memory of ``edgekit bench`` against a bare ONNX Runtime session.

Bar (issue 8): in a virtual environment with only the runtime install
(``pip install edgekit-toolchain[runtime]``), ``edgekit bench`` on an ONNX Runtime artifact
peaks at most 1.5x the resident memory of a bare onnxruntime session running
the same model.

Each scenario runs in its own child process; its peak RSS is the child's
``ru_maxrss`` from ``os.wait4`` (this child only, unlike RUSAGE_CHILDREN).
Scenarios, all with the same interpreter (``--python``, the runtime venv's):

- ``bare-1``: ``import numpy, onnxruntime``, one session, one batch-1 inference
  (the issue's reference figure);
- ``bare-work``: the same session doing the work ``edgekit bench`` does, in
  plain NumPy: load the npz test split, preprocess with the manifest's mean/std,
  batch-1 latency loop, throughput at each batch size, accuracy at batch 128;
- ``edgekit-b1``: ``edgekit bench --batch-sizes 1 --no-accuracy`` (no dataset);
- ``edgekit-full``: ``edgekit bench --dataset npz:TEST`` with the batch sweep
  and the accuracy pass.

Usage::

    uv venv /tmp/rt && uv pip install --python /tmp/rt/bin/python '.[runtime]'
    python benchmarks/runtime_memory.py WORK/artifacts/ort-cpu-int8 \\
        --dataset ../shared/data/cifar10/cifar10-test.npz --python /tmp/rt/bin/python --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BARE_ONE = """
import sys, json, numpy as np, onnxruntime as ort
m = json.load(open(sys.argv[1] + "/manifest.json"))
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[2]); so.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1] + "/" + m["artifact"], so, providers=["CPUExecutionProvider"])
p = m["preprocess"]
x = np.zeros((1, 3, p["height"], p["width"]), np.float32)
s.run(None, {m["io"]["input"]: x})
"""

BARE_WORK = """
import sys, json, time, numpy as np, onnxruntime as ort
art, threads, data, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
m = json.load(open(art + "/manifest.json"))
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
s = ort.InferenceSession(art + "/" + m["artifact"], so, providers=["CPUExecutionProvider"])
name = m["io"]["input"]; p = m["preprocess"]
mean = np.asarray(p["mean"], np.float32); std = np.asarray(p["std"], np.float32)
def pre(u8):
    return np.ascontiguousarray(((u8.astype(np.float32) * np.float32(p["scale"]) - mean) / std).transpose(0, 3, 1, 2))
with np.load(data) as d:
    x, y = d["x"], d["y"]
pool = pre(x[:32])
for _ in range(5):
    s.run(None, {name: pool[:1]})
t0 = time.perf_counter(); n = 0
while n < 30 or time.perf_counter() - t0 < 0.5:
    s.run(None, {name: pool[:1]}); n += 1
for bs in map(int, sizes.split(",")):
    xb = np.ascontiguousarray(np.concatenate([pool] * -(-bs // 32))[:bs])
    t0 = time.perf_counter(); k = 0
    while k < 3 or time.perf_counter() - t0 < 0.3:
        s.run(None, {name: xb}); k += 1
hits = 0
for i in range(0, len(y), 128):
    hits += int((s.run(None, {name: pre(x[i:i + 128])})[0].argmax(1) == y[i:i + 128]).sum())
print(json.dumps({"top1": hits / len(y) * 100}))
"""


def peak_rss_mb(cmd: list[str]) -> tuple[float, str]:
    """Run ``cmd``; return (its peak RSS in MB, its stdout). Raises on a non-zero exit."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise RuntimeError(f"{cmd[:4]} exited {code}: {err.read()[-2000:]}")
        return ru.ru_maxrss / 1024.0, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("artifact", type=Path, help="an ONNX Runtime artifact directory")
    ap.add_argument("--dataset", type=Path, required=True, help="test npz (x uint8, y int)")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the runtime venv")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--output", type=Path, help="write the figures as JSON")
    a = ap.parse_args()

    art, py, thr = str(a.artifact.resolve()), a.python, str(a.threads)
    check = subprocess.run(
        [py, "-c", "import importlib.util as u; print(bool(u.find_spec('torch')))"],
        capture_output=True,
        text=True,
        check=True,
    )
    has_torch = check.stdout.strip() == "True"
    bench = [py, "-m", "edgekit", "bench", "-a", art, "--quick", "--threads", thr]
    scenarios = {
        "bare-1": [py, "-c", BARE_ONE, art, thr],
        "bare-work": [py, "-c", BARE_WORK, art, thr, str(a.dataset), a.batch_sizes],
        "edgekit-b1": [*bench, "--batch-sizes", "1", "--no-accuracy"],
        "edgekit-full": [*bench, "--batch-sizes", a.batch_sizes, "-d", f"npz:{a.dataset}"],
    }
    runs: dict[str, list[float]] = {k: [] for k in scenarios}
    for _ in range(a.reps):  # interleaved, so drift on a shared machine hits all alike
        for k, cmd in scenarios.items():
            runs[k].append(peak_rss_mb(cmd)[0])
    summary = {
        k: {"median_mb": statistics.median(v), "min_mb": min(v), "max_mb": max(v), "runs": v}
        for k, v in runs.items()
    }
    med = {k: s["median_mb"] for k, s in summary.items()}
    ratios = {
        "edgekit-full / bare-work": med["edgekit-full"] / med["bare-work"],
        "edgekit-b1 / bare-1": med["edgekit-b1"] / med["bare-1"],
        "edgekit-full / bare-1": med["edgekit-full"] / med["bare-1"],
    }
    print(f"artifact {art}\npython {py} (torch importable: {has_torch}), threads {thr}")
    print(f"{'scenario':14s} {'median MB':>10s} {'min':>8s} {'max':>8s}  (n={a.reps})")
    for k, s in summary.items():
        print(f"{k:14s} {s['median_mb']:10.1f} {s['min_mb']:8.1f} {s['max_mb']:8.1f}")
    for k, v in ratios.items():
        print(f"{k:26s} {v:.2f}x")
    if a.output:
        a.output.write_text(
            json.dumps(
                {
                    "artifact": art,
                    "python": py,
                    "torch_importable": has_torch,
                    "threads": a.threads,
                    "scenarios": summary,
                    "ratios": ratios,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
