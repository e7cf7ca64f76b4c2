"""Issue 16's bars: INT8 under accuracy control (max_drop) and QAT, by one command.

Part ``r18`` (the shared ResNet-18, FP32 94.76%): builds ``ort-cpu-int8`` (PTQ) and
the same target with ``max_drop = 0.1`` (greedy FP32 fallback chosen on a 1,000-image
slice of the training split), then measures on the full real CIFAR-10 test set
(10,000 images) the top-1 of FP32 ONNX, PTQ and PTQ+max_drop, the FP32 nodes kept
against the quantizable nodes, and the batch-1 p50 latency of PTQ+max_drop over PTQ
(1 thread, interleaved rounds, median and min-max of the per-round ratios).
With ``--sensitivity`` it also writes the per-node sensitivity table and plot.

Part ``qat`` (the shared ResNet-20, 91.73%): builds ``ort-cpu-int8`` (PTQ), runs
``edgekit qat`` (default 2 epochs, SGD lr 0.001, cosine) and records the PTQ top-1,
the fake-quantized PyTorch top-1 and the ONNX Runtime top-1 of the QAT artifact on the
full test set, and the QAT/PTQ latency ratio.

Usage (from the repository root; OMP_NUM_THREADS=1 on a shared machine)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quantization_control.py --work-dir /tmp/qc
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quantization_control.py --part qat --qat-steps 200

Writes ``WORK/quantization_control.json`` and prints a Markdown summary. Latencies on a
shared machine are noisy: only the ratios of one run are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR = SHARED / "data" / "cifar10"
R18 = SHARED / "models" / "resnet18-cifar10-1ff45430.pt"
R20 = SHARED / "models" / "resnet20-12fca82f.th"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def workspace(root: Path, model: str, weights: Path):
    from edgekit.pipeline import ModelSpec, Workspace, prepare

    ws = Workspace(root)
    if (root / "edgekit.json").is_file() and (root / "model.onnx").is_file():
        return ws
    spec = ModelSpec(dataset=f"npz:{CIFAR}", model=model, weights=str(weights))
    return prepare(spec, root, force=True, log=log)


def build(ws, name: str, options: dict | None = None):
    """Build ort-cpu-int8 (with ``options`` over its defaults) as ``name``; its manifest."""
    from edgekit.build import build_target
    from edgekit.pipeline import build_context
    from edgekit.targets import Target, get_target

    base = get_target("ort-cpu-int8")
    t = Target(
        name=name,
        backend=base.backend,
        precision=base.precision,
        options={**base.options, **(options or {})},
        requires=base.requires,
    )
    t0 = time.perf_counter()
    m = build_target(t, build_context(ws), ws.artifact_dir(name), force=True)
    log(f"built {name} in {time.perf_counter() - t0:.0f} s")
    return m


def test_top1(path: Path, test, preprocess) -> float:
    from edgekit.accuracy_control import logits, session

    sess = session(path, 1)
    pred = np.concatenate(
        [
            logits(sess, preprocess.apply(test.x[i : i + 500])).argmax(1)
            for i in range(0, len(test.y), 500)
        ]
    )
    return float((pred == test.y).mean() * 100)


def isa() -> str:
    from edgekit.harness import cpu_flags

    f = cpu_flags()
    return f"{f['cpu']}: " + ", ".join(k for k, v in f["isa"].items() if v)


def part_r18(work: Path, sensitivity: bool) -> dict:
    from edgekit.accuracy_control import latency_ratios
    from edgekit.pipeline import build_context, load_workspace_dataset

    ws = workspace(work / "r18", "resnet18", R18)
    ds = load_workspace_dataset(ws.record())
    ctx = build_context(ws, ds)
    ptq = build(ws, "ort-cpu-int8")
    acc = build(ws, "ort-cpu-int8-maxdrop", {"max_drop": 0.1})
    rec = acc["quantization"]["accuracy_control"]
    paths = {
        "fp32": ws.onnx,
        "ptq": ws.artifact_dir("ort-cpu-int8") / "model.onnx",
        "maxdrop": ws.artifact_dir("ort-cpu-int8-maxdrop") / "model.onnx",
    }
    top1 = {k: test_top1(p, ds.test, ctx.preprocess) for k, p in paths.items()}
    log(f"test top-1: {top1}")
    lat = latency_ratios([paths["ptq"], paths["maxdrop"]], ctx.preprocess.apply(ds.test.x[:1]),
                         rounds=7, iters=60)  # fmt: skip
    out = {
        "model": "resnet18 (shared, CIFAR stem)",
        "test_images": int(len(ds.test.y)),
        "top1": top1,
        "drop_ptq": round(top1["fp32"] - top1["ptq"], 4),
        "drop_maxdrop": round(top1["fp32"] - top1["maxdrop"], 4),
        "max_drop": 0.1,
        "slice": rec["validation"],
        "slice_top1": {"fp32": rec["fp32_top1"], "ptq": rec["int8_top1"], "maxdrop": rec["top1"]},
        "fp32_compute_nodes": rec["fp32_compute_nodes"],
        "quantizable_nodes": rec["quantizable_nodes"],
        "fp32_fraction": round(len(rec["fp32_compute_nodes"]) / rec["quantizable_nodes"], 4),
        "latency_ratio_maxdrop_over_ptq": lat[1],
        "latency_p50_ms": {"ptq": lat[0]["p50_ms"], "maxdrop": lat[1]["p50_ms"]},
        "build_seconds": {"ptq": ptq["build_seconds"], "maxdrop": acc["build_seconds"]},
        "note": rec.get("note"),
    }
    if sensitivity:
        from edgekit.sensitivity import run_sensitivity
        from edgekit.targets import get_target

        rep, j, p = run_sensitivity(ctx, ws.root, get_target("ort-cpu-int8"), 1000, log)
        out["sensitivity"] = {"json": str(j), "png": str(p), "top": rep["groups"][:5]}
    return out


def part_qat(work: Path, epochs: float, steps: int | None, lr: float | None,
             reduce_range: bool = True, seed: int = 0, distill: float = 0.0,
             activation_ranges: str | None = None) -> dict:  # fmt: skip
    from edgekit.accuracy_control import latency_ratios
    from edgekit.pipeline import build_context, load_workspace_dataset
    from edgekit.qat import TARGET, QatConfig, run_qat

    ws = workspace(work / "r20", "resnet20", R20)
    ds = load_workspace_dataset(ws.record())
    ctx = build_context(ws, ds)
    build(ws, "ort-cpu-int8")
    ptq_path = ws.artifact_dir("ort-cpu-int8") / "model.onnx"
    fp32 = test_top1(ws.onnx, ds.test, ctx.preprocess)
    ptq = test_top1(ptq_path, ds.test, ctx.preprocess)
    log(f"ResNet-20 test top-1: FP32 {fp32:.2f}%, PTQ {ptq:.2f}%")
    cfg = QatConfig(
        epochs=epochs, steps=steps, reduce_range=reduce_range, seed=seed, distill=distill
    )
    if lr is not None:
        cfg.lr = lr
    if activation_ranges is not None:
        cfg.activation_ranges = activation_ranges
    m = run_qat(ws, ctx, ds.test, cfg, force=True, log=log)
    q = m["quantization"]["qat"]
    qat_path = ws.artifact_dir(TARGET) / "model.onnx"
    lat = latency_ratios([ptq_path, qat_path], ctx.preprocess.apply(ds.test.x[:1]), 7, 100)
    return {
        "model": "resnet20 (shared, He et al.)",
        "test_images": int(len(ds.test.y)),
        "fp32_top1": round(fp32, 4),
        "ptq_top1": round(ptq, 4),
        "qat_torch_top1": q["torch_top1"],
        "qat_ort_top1": q["ort_top1"],
        "qat_ort_minus_torch": round(q["ort_top1"] - q["torch_top1"], 4),
        "qat_minus_ptq": round(q["ort_top1"] - ptq, 4),
        "agreement": q["agreement"],
        "isa_record": m["isa"],
        "training": q["training"],
        "config": q["config"],
        "latency_ratio_qat_over_ptq": lat[1],
        "size_bytes": {"ptq": ptq_path.stat().st_size, "qat": qat_path.stat().st_size},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-quantization-control"))
    ap.add_argument("--part", choices=["all", "r18", "qat"], default="all")
    ap.add_argument("--sensitivity", action="store_true", help="Also the ResNet-18 table/plot.")
    ap.add_argument("--qat-epochs", type=float, default=2.0)
    ap.add_argument("--qat-steps", type=int, default=None)
    ap.add_argument("--qat-lr", type=float, default=None, help="Default: QatConfig's.")
    ap.add_argument("--qat-seed", type=int, default=0, help="Batch order/augmentation seed.")
    ap.add_argument("--qat-full-range", action="store_true", help="8-bit weights (need VNNI).")
    ap.add_argument("--qat-distill", type=float, default=0.0, help="KD weight from FP32.")
    ap.add_argument(
        "--qat-activation-ranges",
        choices=["calibrated", "moving"],
        default=None,
        help="Default: QatConfig's (calibrated: PTQ's scales, frozen).",
    )
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if not (CIFAR / "cifar10-test.npz").is_file():
        print(f"error: {CIFAR} is missing (the shared real CIFAR-10)", file=sys.stderr)
        return 2
    a.work_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "isa": isa()}
    if a.part in ("all", "r18"):
        res["r18"] = part_r18(a.work_dir, a.sensitivity)
    if a.part in ("all", "qat"):
        res["qat"] = part_qat(
            a.work_dir,
            a.qat_epochs,
            a.qat_steps,
            a.qat_lr,
            not a.qat_full_range,
            a.qat_seed,
            a.qat_distill,
            a.qat_activation_ranges,
        )
    out = a.work_dir / "quantization_control.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
