"""FP16 on ONNX Runtime's CPU execution provider, measured (issue 17, deliver 5).

    .venv/bin/python benchmarks/fp16_cpu.py --out runs/fp16

For the shared ResNet-20 and ResNet-18 (CIFAR stem; the shared canonical checkpoint when
it is in ../shared, else random weights and no top-1), the script exports the FP32 ONNX
with :func:`edgekit.export`, builds ``ort-cpu`` and a script-local ``ort-cpu-fp16``
target (the onnxruntime backend's ``fp16`` precision on ``CPUExecutionProvider``: the
FP32 ONNX converted by onnxconverter-common's ``convert_float_to_float16`` with
``keep_io_types=True``, :func:`edgekit.qdq.make_fp16_onnx`), and then:

- asks ONNX Runtime what it ran: the optimized graph of the FP16 session (op types,
  the ``Cast`` nodes ONNX Runtime inserted) and its profiler's per-node input element
  types (which nodes ran a float16 kernel, which a float32 kernel behind casts);
- benchmarks both artifacts with :func:`edgekit.api.benchmark` in one run: batch 1,
  1 thread, interleaved rounds, p50 and the FP16/FP32 ratio per round (median, min-max),
  top-1 on all 10,000 test images.

Results: ``OUT/fp16_cpu.json`` and ``OUT/fp16_cpu.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

#: The FP16 CPU target, declined for shipping (docs/targets.md), defined here to measure it.
FP16_TARGET = """\
name = "ort-cpu-fp16"
backend = "onnxruntime"
precision = "fp16"
description = "ONNX Runtime FP16 ONNX (FP32 I/O) on CPUExecutionProvider (measured, not shipped)"

[requires]
device = "cpu"

[options]
execution_provider = "CPUExecutionProvider"
"""


def write_fp16_target(directory: Path) -> Path:
    """Write the ``ort-cpu-fp16`` target file into ``directory``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / "ort-cpu-fp16.toml"
    p.write_text(FP16_TARGET)
    return p


def what_ran(onnx_path: Path, shape, runs: int = 20) -> dict:
    """Which nodes ONNX Runtime's CPU EP ran in float16, from its optimized graph and
    its profiler (the element type of each kernel's first input).

    Returns:
        ``{"optimized_ops": {op: n}, "kernels": {"op/dtype": n per run}, "fp16_kernels",
        "fp32_kernels"}``.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as td:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(td) / "prof")
        so.optimized_model_filepath = str(Path(td) / "opt.onnx")
        s = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        name = s.get_inputs()[0].name
        for _ in range(runs):
            s.run(None, {name: x})
        prof = s.end_profiling()
        opt = onnx.load(str(Path(td) / "opt.onnx"))
        events = json.loads(Path(prof).read_text())
    ops = collections.Counter(n.op_type for n in opt.graph.node)
    kern: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            a = e["args"]
            its = a.get("input_type_shape") or [{}]
            dtype = next(iter(its[0]), "?")
            kern[f"{a['op_name']}/{dtype}"] += 1
    per_run = {k: v // runs for k, v in sorted(kern.items())}
    heavy = ("Conv", "Gemm", "MatMul", "FusedConv")
    return {
        "optimized_ops": dict(sorted(ops.items())),
        "kernels": per_run,
        "compute_fp16": {
            k: v for k, v in per_run.items() if k.split("/")[0] in heavy and "16" in k
        },
        "compute_fp32": {
            k: v for k, v in per_run.items() if k.split("/")[0] in heavy and "16" not in k
        },
    }


def ratio(a: list, b: list) -> dict | None:
    """Per-round ratios a[i]/b[i]: median, min, max."""
    r = [x / y for x, y in zip(a or [], b or [], strict=False) if x and y]
    if not r:
        return None
    return {"median": float(np.median(r)), "min": min(r), "max": max(r), "rounds": len(r)}


def measure(
    model: str, weights: str | None, dataset: str, out: Path, rounds: int, log, images=None
) -> dict:
    import edgekit

    tfile = write_fp16_target(out)
    w = out / f"work-{model}"
    exp = edgekit.export(model, dataset, weights=weights, epochs=0, work_dir=w, force=True, log=log)
    built = edgekit.build(
        w, ["ort-cpu", "ort-cpu-fp16"], target_files=[tfile], force=True, errors="raise", log=log
    )
    fp16 = next(a for a in built.artifacts if a.target == "ort-cpu-fp16")
    ran = what_ran(fp16.path / "model.onnx", (1, 3, 32, 32))
    res = edgekit.benchmark(
        w,
        ["ort-cpu", "ort-cpu-fp16"],
        target_files=[tfile],
        threads=1,
        rounds=rounds,
        baseline=False,
        accuracy=weights is not None,
        accuracy_images=images,
        log=log,
    )
    rows = {r["target"]: r for r in res.rows}
    f32, f16 = rows["ort-cpu"], rows["ort-cpu-fp16"]
    return {
        "model": model,
        "weights": weights or "random",
        "accuracy_images": images or "all",
        "export_check": exp.export_check,
        "fp16_build": fp16.manifest.get("quantization"),
        "what_ran": ran,
        "ort-cpu": {k: f32[k] for k in ("top1", "size_mb", "status")}
        | {"p50_ms": f32["latency_ms"]["p50"], "rounds_p50": f32["latency_ms"]["rounds_p50"]},
        "ort-cpu-fp16": {k: f16[k] for k in ("top1", "size_mb", "status")}
        | {"p50_ms": f16["latency_ms"]["p50"], "rounds_p50": f16["latency_ms"]["rounds_p50"]},
        "fp16_over_fp32": ratio(f16["latency_ms"]["rounds_p50"], f32["latency_ms"]["rounds_p50"]),
        "environment": res.environment,
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | ort-cpu p50 ms | ort-cpu-fp16 p50 ms | FP16/FP32 (median, min-max) | "
        "top-1 FP32 / FP16 | size MB FP32 / FP16 | Conv/Gemm kernels FP32 / FP16 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        q = r["fp16_over_fp32"]
        t32, t16 = r["ort-cpu"]["top1"], r["ort-cpu-fp16"]["top1"]
        top = f"{t32:.2f} / {t16:.2f}" if t32 is not None else "- (random weights)"
        k32 = sum(r["what_ran"]["compute_fp32"].values())
        k16 = sum(r["what_ran"]["compute_fp16"].values())
        lines.append(
            f"| {r['model']} | {r['ort-cpu']['p50_ms']:.3f} | {r['ort-cpu-fp16']['p50_ms']:.3f} | "
            f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f}) | {top} | "
            f"{r['ort-cpu']['size_mb']:.2f} / {r['ort-cpu-fp16']['size_mb']:.2f} | {k32} / {k16} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "data" / "cifar10"))
    ap.add_argument("--models", default="resnet20,resnet18")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--accuracy-images", default=None, help="MODEL=N: score N test images (default all)"
    )
    ap.add_argument("--out", default="runs/fp16")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {
        "resnet20": SHARED / "models" / "resnet20-12fca82f.th",
        "resnet18": SHARED / "models" / "resnet18-cifar10-1ff45430.pt",
    }
    images = dict(x.split("=") for x in a.accuracy_images.split(",")) if a.accuracy_images else {}
    results = []
    for m in a.models.split(","):
        w = weights.get(m)
        results.append(
            measure(
                m,
                str(w) if w and w.is_file() else None,
                f"npz:{a.data}",
                out,
                a.rounds,
                print,
                int(images[m]) if m in images else None,
            )
        )
        (out / "fp16_cpu.json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results)
    (out / "fp16_cpu.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
