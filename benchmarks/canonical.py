"""The canonical result by one command: ResNet-18 on CIFAR-10, pruned and quantized.

Starts from the shared edgekit ResNet-18 (94.76% top-1 on the full CIFAR-10 test set),
runs :func:`edgekit.sweep.sweep` at pruning ratios 0, 0.5 and 0.6 (channel ratios,
uniform L2 importance, round_to 8, fine-tuning with knowledge distillation from the
unpruned model on ``--device``, for ``--finetune-minutes`` or ``--finetune-epochs``),
lowers every model to each CPU target (ort-cpu FP32, ort-cpu-int8 QDQ, ts-fx-int8),
benchmarks each at 1 thread (top-1 on the full test set, batch-1 p50 latency), and
prints a seed-style table under the seed numbers::

    python benchmarks/canonical.py --device cuda --finetune-minutes 5

Everything lands in ``--work`` (default ``canonical-work``): the sweep's ``sweep.json``,
``sweep.md``, ``sweep.png`` and this script's ``canonical.md``.

``--smoke`` is a check that the command runs end to end, not a result: the first 5,000
training and 1,000 test images (copied into WORK/smoke-data), edgekit's quick
measurement rules, and a fine-tuning budget of ``--finetune-minutes`` (default 0.25
with ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SEEDS = [
    ("FP32 (seed)", 42.66, 92.02),
    ("pruned 60% + INT8 (seed)", 2.96, 89.03),
]
TARGETS = ("ort-cpu", "ort-cpu-int8", "ts-fx-int8")
LABEL = {"ort-cpu": "", "ort-cpu-int8": " + INT8 (ORT QDQ)", "ts-fx-int8": " + INT8 (FX)"}


def smoke_data(data_dir: Path, out: Path, train: int, test: int) -> Path:
    """The first ``train``/``test`` images of the npz pair, for a quick end-to-end check."""
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        with np.load(data_dir / f"cifar10-{split}.npz", allow_pickle=False) as z:
            np.savez(out / f"cifar10-{split}.npz", x=z["x"][:n], y=z["y"][:n])
    return out


def row_name(ratio: float, target: str) -> str:
    if ratio == 0:
        return {"ort-cpu": "FP32", "ort-cpu-int8": "INT8 (ORT QDQ)", "ts-fx-int8": "INT8 (FX)"}[
            target
        ]
    return f"pruned {ratio:.0%}{LABEL[target]}"


def table(rows: list[dict], test_images: int) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    out = [
        "| model | size MB | top-1 % | CPU p50 ms (1 thread) | MACs (M) | status |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, size, top1 in SEEDS:
        out.append(f"| {name} | {size:.2f} | {top1:.2f} | - | - | published |")
    order = {t: i for i, t in enumerate(TARGETS)}
    for r in sorted(rows, key=lambda r: (r["pruning_ratio"], order.get(r["target"], 9))):
        macs = r.get("macs")
        out.append(
            f"| {row_name(r['pruning_ratio'], r['target'])} | {f(r.get('size_mb'), '.2f')} | "
            f"{f(r.get('top1'), '.2f')} | {f((r.get('latency_ms') or {}).get('p50'), '.3f')} | "
            f"{f(macs / 1e6 if macs else None, '.1f')} | {r['status']} |"
        )
    out.append(f"\ntop-1 on {test_images:,} CIFAR-10 test images.")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--weights", type=Path, default=SHARED / "models" / "resnet18-cifar10-1ff45430.pt"
    )
    ap.add_argument("--data-dir", type=Path, default=SHARED / "data" / "cifar10")
    ap.add_argument("--work", type=Path, default=Path("canonical-work"))
    ap.add_argument("--ratios", default="0.5,0.6", help="channel pruning ratios (0 is added)")
    ap.add_argument("--device", default="auto", help="fine-tuning device: auto|cpu|cuda|cuda:N")
    ap.add_argument("--finetune-minutes", type=float, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--recipe", default=None, help="fine-tuning recipe (default: 'default')")
    ap.add_argument("--lr", type=float, default=None, help="fine-tuning lr (default 0.01)")
    ap.add_argument("--kd-features", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end check, not a result")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()

    from edgekit.errors import EdgekitError
    from edgekit.harness import BenchConfig
    from edgekit.pipeline import ModelSpec
    from edgekit.prune import finetune_config
    from edgekit.sweep import sweep

    try:
        ratios = [0.0] + [float(r) for r in a.ratios.split(",") if r.strip()]
        minutes = a.finetune_minutes
        if minutes is None and a.finetune_epochs is None:
            minutes = 0.25 if a.smoke else 5.0
        finetune_config(a.recipe, a.finetune_epochs, minutes, a.lr)  # validate up front
        data_dir = a.data_dir
        if a.smoke:
            data_dir = smoke_data(a.data_dir, a.work / "smoke-data", 5000, 1000)
        spec = ModelSpec(dataset=f"npz:{data_dir}", weights=str(a.weights), device=a.device)
        spec.prune_options = {
            "importance": "l2",
            "round_to": 8,
            "by": "channels",
            "global_pruning": False,
            "distill": True,
            "kd_features": a.kd_features,
            **({"finetune_minutes": minutes} if minutes else {}),
            **({"finetune_epochs": a.finetune_epochs} if a.finetune_epochs is not None else {}),
            **({"recipe": a.recipe} if a.recipe else {}),
            **({"lr": a.lr} if a.lr is not None else {}),
        }
        cfg = BenchConfig.quick() if a.smoke else BenchConfig(batch_sizes=(1,))
        t0 = time.perf_counter()
        rows = sweep(
            spec,
            a.work,
            ratios,
            targets=list(TARGETS),
            cfg=cfg,
            threads=a.threads,
            force=a.force,
        )
    except EdgekitError as e:
        raise SystemExit(f"error: {e}") from None
    rec = json.loads((a.work / f"r{ratios[-1]:g}" / "edgekit.json").read_text())
    with np.load(data_dir / "cifar10-test.npz", allow_pickle=False) as z:
        n_test = len(z["y"])
    md = [
        "Seeds: FP32 42.66 MB at 92.02% top-1; pruned 60% + INT8 2.96 MB at 89.03%.",
        "",
        table(rows, n_test),
        f"ResNet-18 `{a.weights.name}`, fine-tuning: "
        + ", ".join(f"{k}={v}" for k, v in spec.prune_options.items())
        + f"; fine-tuned on {rec.get('train_device')}; {a.threads} thread(s) for latency; "
        f"{'SMOKE RUN (subset, quick rules): not a result; ' if a.smoke else ''}"
        f"{(time.perf_counter() - t0) / 60:.1f} min in all.",
    ]
    bar = [
        r
        for r in rows
        if r["pruning_ratio"] == 0.6 and r["target"] == "ort-cpu-int8" and r["status"] == "ok"
    ]
    if bar and not a.smoke and n_test == 10000:
        r = bar[0]
        ok = r["top1"] >= 92.0 and r["size_mb"] <= 1.9
        md.append(
            f"\nBar (pruned 60% + ort-cpu-int8 >= 92.0% at <= 1.9 MB): "
            f"{r['top1']:.2f}% at {r['size_mb']:.2f} MB: {'met' if ok else 'NOT met'}."
        )
    text = "\n".join(md) + "\n"
    (a.work / "canonical.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
