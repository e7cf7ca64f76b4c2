"""Choose ort-cpu-int8's defaults by measurement: a sweep of quantization options.

For the shared public ResNet-20 on the real CIFAR-10 test set, every
configuration is built with edgekit's own builder and measured with edgekit's
harness: top-1 on all 10,000 test images, and SingleStream latency at batch 1
with 1 thread (p50), beside PyTorch eager FP32 and ONNX Runtime FP32 in the
same run. One axis is varied at a time around the default (QDQ, per-channel,
U8S8, MinMax, 32 images per class). With ``--resnet18`` it also times a
ResNet-18 (CIFAR stem, random weights: latency and size only) for the speed bar.

Usage (from the repository root)::

    .venv/bin/python benchmarks/quant_defaults.py --work-dir /tmp/qsweep
    .venv/bin/python benchmarks/quant_defaults.py --work-dir /tmp/qsweep --resnet18 --only default,s8s8

Timings on a shared 2-core machine are noisy: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

#: label -> options over the ort-cpu-int8 defaults (one axis at a time).
CONFIGS: dict[str, dict] = {
    "default": {},
    "qoperator": {"quant_format": "QOperator"},
    "s8s8": {"activation_type": "QInt8"},
    "per-tensor": {"per_channel": False},
    "entropy": {"calibration_method": "entropy"},
    "percentile": {"calibration_method": "percentile"},
    "calib-8": {"calib_per_class": 8},
    "calib-100": {"calib_per_class": 100},
}


def int8_target(label: str, overrides: dict):
    from edgekit.targets import variant

    return variant("ort-cpu-int8", label, overrides)


def measure(artifact_dir: Path, test, seconds: float, threads: int, accuracy: bool) -> dict:
    from edgekit.build import open_artifact
    from edgekit.harness import BenchConfig, measure_accuracy, measure_latency
    from edgekit.preprocess import Preprocess

    runner, m = open_artifact(artifact_dir, threads)
    try:
        pre = Preprocess.from_dict(m["preprocess"])
        cfg = BenchConfig(warmup_queries=50, min_queries=300, min_duration_s=seconds)
        lat, _ = measure_latency(runner, pre.apply(test.x[:1]), cfg)
        acc = measure_accuracy(runner, test.x, test.y, pre, 100) if accuracy else None
    finally:
        runner.close()
    return {
        "p50_ms": lat["p50"],
        "p90_ms": lat["p90"],
        "top1": acc["top1"] if acc else None,
        "size_bytes": m["size_bytes"],
        "options": m.get("options", {}),
        "fp32_op_types": (m.get("quantization") or {}).get("fp32_op_types"),
    }


def workspace(root: Path, model: str, weights: str | None, dataset: str):
    from edgekit.pipeline import ModelSpec, Workspace, prepare

    ws = Workspace(root)
    if ws.record_path.is_file():
        return ws
    if weights is None:  # random weights: for latency and size only
        from edgekit.models import build_model, save_checkpoint

        root.mkdir(parents=True, exist_ok=True)
        ck = root.parent / f"{root.name}-random.pt"
        save_checkpoint(ck, build_model(model, 10), model, 10, force=True)
        weights = str(ck)
    spec = ModelSpec(dataset=dataset, model=model, weights=weights)
    return prepare(spec, root, force=True, log=lambda *_: None)


def sweep(ws, ds, labels, seconds, threads, accuracy, log) -> list[dict]:
    from edgekit.build import build_target
    from edgekit.pipeline import build_context
    from edgekit.targets import get_target

    ctx = build_context(ws, ds)
    rows = []
    todo = [(t, get_target(t)) for t in ("pytorch-fp32", "ort-cpu")]
    todo += [(lab, int8_target(lab, CONFIGS[lab])) for lab in labels]
    for label, target in todo:
        out = ws.artifacts / f"sweep-{label}"
        t0 = time.perf_counter()
        build_target(target, ctx, out, force=True)
        build_s = time.perf_counter() - t0
        r = measure(out, ds.test, seconds, threads, accuracy)
        r.update(label=label, build_s=build_s)
        log(
            f"{label:12s} top-1 {r['top1'] if r['top1'] is not None else float('nan'):6.2f}  "
            f"p50 {r['p50_ms']:7.3f} ms  size {r['size_bytes'] / 1e6:6.3f} MB  "
            f"build {build_s:5.1f} s"
        )
        rows.append(r)
    return rows


def table(rows: list[dict], title: str) -> str:
    eager = next(r for r in rows if r["label"] == "pytorch-fp32")
    onnx = next(r for r in rows if r["label"] == "ort-cpu")
    lines = [
        f"### {title}",
        "",
        "| config | format | act/wt | per-ch | method | calib/class | top-1 | drop | p50 ms "
        "| vs eager | size vs FP32 ONNX |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o = r["options"]
        q = "quant_format" in o
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "-"
        drop = f"{onnx['top1'] - r['top1']:+.2f}" if r["top1"] is not None and onnx["top1"] else "-"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    o.get("quant_format", "-") if q else "-",
                    f"{o['activation_type'][1:]}/{o['weight_type'][1:]}" if q else "fp32",
                    str(o.get("per_channel", "-")) if q else "-",
                    o.get("calibration_method", "-") if q else "-",
                    str(o.get("calib_per_class", "-")) if q else "-",
                    top1,
                    drop,
                    f"{r['p50_ms']:.3f}",
                    f"{eager['p50_ms'] / r['p50_ms']:.2f}x",
                    f"{r['size_bytes'] / onnx['size_bytes']:.3f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-quant-defaults"))
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10")
    ap.add_argument("--weights", type=Path, default=SHARED / "models" / "resnet20-12fca82f.th")
    ap.add_argument("--only", default="", help="comma-separated configs (default: all)")
    ap.add_argument("--seconds", type=float, default=3.0, help="latency seconds per row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resnet18", action="store_true", help="also time ResNet-18 (CIFAR stem)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args(argv)

    from edgekit.data import load_dataset

    if not (a.data / "cifar10-test.npz").is_file() or not a.weights.is_file():
        print(f"real data missing: {a.data} / {a.weights}", file=sys.stderr)
        return 2
    labels = [s for s in a.only.split(",") if s] or list(CONFIGS)
    unknown = set(labels) - set(CONFIGS)
    if unknown:
        print(f"unknown config(s) {sorted(unknown)}; known: {list(CONFIGS)}", file=sys.stderr)
        return 2
    ds = load_dataset(f"npz:{a.data}")
    out = {}
    ws = workspace(a.work_dir / "resnet20", "resnet20", str(a.weights), f"npz:{a.data}")
    print("ResNet-20 (shared weights), real CIFAR-10 test set, batch 1, "
          f"{a.threads} thread(s)", flush=True)  # fmt: skip
    out["resnet20"] = sweep(ws, ds, labels, a.seconds, a.threads, True, print)
    print(table(out["resnet20"], "ResNet-20, CIFAR-10 (10,000 test images)"), flush=True)
    if a.resnet18:
        ws18 = workspace(a.work_dir / "resnet18", "resnet18", None, f"npz:{a.data}")
        lab18 = [lab for lab in labels if lab in ("default", "s8s8", "qoperator")]
        print("ResNet-18 (CIFAR stem, random weights): latency and size only", flush=True)
        out["resnet18"] = sweep(ws18, ds, lab18, a.seconds, a.threads, False, print)
        print(table(out["resnet18"], "ResNet-18 (CIFAR stem), random weights"), flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
