"""Unstructured sparsity, 2:4 sparsity and weight clustering on the shared ResNet-20 (issue 17).

One command (from the repository root, ../shared holding CIFAR-10 and the weights)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity.py --out runs/sparsity

For each variant (unstructured 50% global L1, 2:4, cluster 4 bits, cluster 2 bits; pick
with ``--variants``):

1. ``edgekit.compress.driver.compress_checkpoint`` without fine-tuning: top-1 on the full
   test set right after compression (BatchNorm statistics re-estimated, as the driver does);
2. the same with ``--epochs`` (default 2) of KD fine-tuning from the dense model, lr 0.01,
   1 thread: top-1 after fine-tuning, wall time, load average, sparsity reached / codebook;
3. export (``edgekit.api.export``) and build ``ort-cpu`` and ``ort-cpu-int8``; the work
   directory's ``edgekit.json`` gets the checkpoint's ``compression`` record, as the
   pipeline does, so ``edgekit bench -t ...`` there shows the row notes;
4. one ``edgekit.api.benchmark`` over every artifact (dense and compressed together), 1
   thread, latency in interleaved rounds; the latency ratio of each artifact to the dense
   model's artifact of the same target is the median of the per-round ratios, with min-max.

ONNX size raw and deflated (``edgekit.harness.deflated_bytes``) and each artifact's
``zip_mb``. Checkpoints are cached in ``OUT`` (delete them to re-run a variant).
Writes ``OUT/sparsity.json`` and ``OUT/sparsity.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEKIT_SHARED", ROOT.parent / "shared"))
VARIANTS = {
    "unstructured-50": ("unstructured", 0.5),
    "2-4": ("2:4", 0.5),
    "cluster-4bit": ("cluster", 4),
    "cluster-2bit": ("cluster", 2),
}
TARGETS = ["ort-cpu", "ort-cpu-int8"]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _compress(name, technique, level, args, dataset) -> dict:
    from edgekit.compress.driver import compress_checkpoint

    out = Path(args.out)
    ckpt = out / f"{name}.pt"
    if not ckpt.is_file():
        t0 = time.monotonic()
        load0 = os.getloadavg()
        rec0 = compress_checkpoint(
            technique, level, str(args.weights), out / f"{name}-noft.pt", dataset,
            model="resnet20", finetune_epochs=0, force=True, log=_log,
        )  # fmt: skip
        t1 = time.monotonic()
        rec = compress_checkpoint(
            technique, level, str(args.weights), ckpt, dataset, model="resnet20",
            finetune_epochs=args.epochs, distill=True, device="cpu", force=True, log=_log,
        )  # fmt: skip
        rec["bench"] = {
            "top1_no_finetune": rec0["test_top1"],
            "finetune_epochs": args.epochs,
            "train_images": args.train_subset or 50_000,
            "finetune_wall_s": round(time.monotonic() - t1, 1),
            "no_finetune_wall_s": round(t1 - t0, 1),
            "loadavg_start": load0,
            "loadavg_end": os.getloadavg(),
        }
        (out / f"{name}.json").write_text(json.dumps(rec, indent=1))
    return json.loads((out / f"{name}.json").read_text())


def _subset(args, out: Path) -> str:
    """``npz:SUB.npz,TEST.npz`` with ``args.train_subset`` class-balanced training images."""
    import numpy as np

    data = Path(args.data)
    sub = out / f"train-subset-{args.train_subset}.npz"
    if not sub.is_file():
        with np.load(data / "cifar10-train.npz") as z:
            x, y = z["x"], z["y"]
        rng = np.random.default_rng(0)
        per = args.train_subset // 10
        idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per] for c in range(10)])
        idx = rng.permutation(idx)
        np.savez(sub, x=x[idx], y=y[idx])
    return f"npz:{sub},{data / 'cifar10-test.npz'}"


def _workspace(name, weights, record, args, dataset) -> Path:
    from edgekit import api

    ws = Path(args.out) / f"ws-{name}"
    if not (ws / "model.onnx").is_file():
        api.export("resnet20", dataset, work_dir=ws, weights=weights, force=True, log=_log)
    if record is not None:  # what the pipeline copies from the checkpoint (issue 17)
        rp = ws / "edgekit.json"
        rec = json.loads(rp.read_text())
        rec["compression"] = {k: v for k, v in record.items() if k != "bench"}
        rp.write_text(json.dumps(rec, indent=1))
    for t in TARGETS:
        if not (ws / "artifacts" / t / "manifest.json").is_file():
            api.build(ws, [t], force=True, errors="raise", log=_log)
    return ws


def _ratio(rows, name, target, base="dense"):
    def p50s(n):
        r = rows[(n, target)]
        return (r.get("latency_ms") or {}).get("rounds_p50") or []

    a, b = p50s(name), p50s(base)
    if not a or len(a) != len(b):
        return None
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def main() -> None:
    import torch

    from edgekit import api
    from edgekit.harness import BenchConfig, deflated_bytes

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/sparsity")
    ap.add_argument("--weights", default=str(SHARED / "models" / "resnet20-12fca82f.th"))
    ap.add_argument("--data", default=str(SHARED / "data" / "cifar10"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--skip-bench", action="store_true", help="compress only")
    ap.add_argument("--quick", action="store_true", help="a smoke run: short latency rules")
    ap.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="fine-tune on N class-balanced training images (seed 0) instead of all 50,000",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = f"npz:{args.data}"
    test_ds = dataset
    if args.train_subset:
        dataset = _subset(args, out)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    records = {}
    for n in names:
        tech, level = VARIANTS[n]
        _log(f"{n}: {tech} at level {level}")
        records[n] = _compress(n, tech, level, args, dataset)
        b = records[n]["bench"]
        _log(
            f"{n}: top-1 {b['top1_no_finetune']:.2f}% before fine-tuning, "
            f"{records[n]['test_top1']:.2f}% after {args.epochs} epochs ({b['finetune_wall_s']} s)"
        )
    if args.skip_bench:
        return
    wss = {"dense": _workspace("dense", args.weights, None, args, test_ds)}
    for n in names:
        wss[n] = _workspace(n, str(out / f"{n}.pt"), records[n], args, test_ds)
    dirs = [(n, t, wss[n] / "artifacts" / t) for n in wss for t in TARGETS]
    cfg = BenchConfig(min_queries=200, min_duration_s=7.0, batch_sizes=(1,), rounds=args.rounds)
    if args.quick:
        cfg = BenchConfig(min_queries=20, min_duration_s=0.5, batch_sizes=(1,), rounds=2)
    load0 = os.getloadavg()
    res = api.benchmark(
        artifacts=[d for *_, d in dirs], dataset=test_ds, threads=1, config=cfg, log=_log
    )
    load1 = os.getloadavg()
    rows = {(n, t): r for (n, t, _), r in zip(dirs, res.rows, strict=True)}
    table = []
    for n in wss:
        onnx = wss[n] / "model.onnx"
        rec = records.get(n) or {}
        sp = (rec.get("sparsity_reached") or {}).get("sparsity")
        cb = rec.get("codebook") or {}
        line = {
            "variant": n,
            "technique": rec.get("technique", "dense"),
            "level": rec.get("level"),
            "top1_no_finetune": (rec.get("bench") or {}).get("top1_no_finetune"),
            "top1_torch": rec.get("test_top1"),
            "finetune_wall_s": (rec.get("bench") or {}).get("finetune_wall_s"),
            "sparsity": sp,
            "codebook_bytes": cb.get("bytes"),
            "onnx_mb": onnx.stat().st_size / 1e6,
            "onnx_zip_mb": deflated_bytes([onnx]) / 1e6,
        }
        for t in TARGETS:
            r = rows[(n, t)]
            line[t] = {
                "status": r["status"],
                "top1": r.get("top1"),
                "p50_ms": (r.get("latency_ms") or {}).get("p50"),
                "size_mb": r.get("size_mb"),
                "zip_mb": r.get("zip_mb"),
                "latency_vs_dense": _ratio(rows, n, t),
            }
        table.append(line)
    result = {
        "table": table,
        "records": records,
        "cpu_count": os.cpu_count(),
        "loadavg_bench": [load0, load1],
        "environment": res.environment,
        "rows": res.rows,
    }
    (out / "sparsity.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "sparsity.md").write_text(_markdown(table, load0, load1))
    print(_markdown(table, load0, load1))


def _markdown(table, load0, load1) -> str:
    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    def ratio(d):
        return "-" if not d else f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"

    lines = [
        "| variant | top-1 before FT | top-1 after FT (torch) | sparsity | codebook KB | "
        "ONNX MB | ONNX zip MB | ort-cpu top-1 | ort-cpu zip MB | ort-cpu latency / dense | "
        "ort-cpu-int8 top-1 | int8 zip MB | ort-cpu-int8 latency / dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in table:
        a, b = t["ort-cpu"], t["ort-cpu-int8"]
        cb = t["codebook_bytes"]
        lines.append(
            f"| {t['variant']} | {f(t['top1_no_finetune'])} | {f(t['top1_torch'])} | "
            f"{f(t['sparsity'], '.3f')} | {f(cb / 1e3 if cb else None, '.1f')} | "
            f"{f(t['onnx_mb'], '.3f')} | {f(t['onnx_zip_mb'], '.3f')} | {f(a['top1'])} | "
            f"{f(a['zip_mb'], '.3f')} | {ratio(a['latency_vs_dense'])} | {f(b['top1'])} | "
            f"{f(b['zip_mb'], '.3f')} | {ratio(b['latency_vs_dense'])} |"
        )
    lines.append("")
    lines.append(
        f"Load average (1/5/15 min) at the start and end of the latency rounds: "
        f"{' '.join(f'{x:.2f}' for x in load0)} / {' '.join(f'{x:.2f}' for x in load1)}"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
