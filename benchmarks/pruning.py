"""The pruning bars of issue 5, measured.

Speed (random weights suffice for latency)::

    .venv/bin/python benchmarks/pruning.py speed --out speed.json

  ResNet-18 (CIFAR stem) unpruned vs pruned until MACs drop >= 50% (uniform L2,
  round_to 8), batch 1, 1 thread, ONNX Runtime FP32 and INT8 (U8S8 QDQ, per-channel,
  quantize_static on random calibration data), the same run, median and p10-p90.

Accuracy (real CIFAR-10 and the shared ResNet-20 in ../shared)::

    .venv/bin/python benchmarks/pruning.py accuracy --budget-min 20 --out acc.json
    .venv/bin/python benchmarks/pruning.py accuracy --epochs 15 --out acc.json

  The shared ResNet-20 pruned by >= 50% of MACs (a MACs target searched over a uniform
  channel ratio, or --ratio/--layer-ratio channel ratios), fine-tuned with KD from the
  unpruned model (logits; plus block outputs with --kd-features) for a fixed compute
  budget: a wall-clock budget (--budget-min, cosine over time) or a number of epochs
  (--epochs, cosine over epochs). With --adaptive-bn (what edgekit prune does) the
  BatchNorm statistics are re-estimated right after pruning. Top-1 on the full test set
  before pruning, right after it, and after fine-tuning (also with the statistics
  re-estimated after fine-tuning, which costs accuracy), plus the wall time. A quick
  start check: --epochs 1 --train-subset 2000.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _ort_latency(path: Path, x: np.ndarray, seconds: float, min_runs: int = 200) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(20):
        sess.run(None, {name: x})
    out = []
    t_end = time.perf_counter() + seconds
    while len(out) < min_runs or time.perf_counter() < t_end:
        t = time.perf_counter()
        sess.run(None, {name: x})
        out.append((time.perf_counter() - t) * 1e3)
    return np.array(out)


def _int8(src: Path, dst: Path, shape) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter(
                [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(16)]
            )

        def get_next(self):
            return next(self.it, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    import onnx

    name = onnx.load(str(pre)).graph.input[0].name
    r = Reader()
    r.it = iter([{name: d["input"]} for d in r.it])
    quantize_static(
        str(pre),
        str(dst),
        r,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return dst


def speed(args) -> dict:
    from edgekit.export import export_onnx
    from edgekit.models import build_model
    from edgekit.prune import PruneConfig, prune_model

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    base = build_model("resnet18", 10).eval()
    pruned = copy.deepcopy(base)
    res = prune_model(pruned, x, PruneConfig(ratio=args.macs, by="macs", round_to=args.round_to))
    widths = [m.out_channels for n, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)]
    out = {"prune": res.to_dict(), "widths": widths, "rows": {}}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    xs = x.numpy()
    paths = {}
    for name, m in (("unpruned", base), ("pruned", pruned)):
        p = work / f"{name}.onnx"
        export_onnx(m, np.repeat(xs, 2, 0), p, force=True, exporter="torchscript")
        paths[(name, "fp32")] = p
        paths[(name, "int8")] = _int8(p, work / f"{name}.int8.onnx", (1, 3, 32, 32))
    lat = {}
    for _ in range(args.rounds):  # interleave to share the machine's noise fairly
        for key, p in paths.items():
            lat.setdefault(key, []).append(_ort_latency(p, xs, args.seconds))
    for prec in ("fp32", "int8"):
        med = {}
        for name in ("unpruned", "pruned"):
            a = np.concatenate(lat[(name, prec)])
            med[name] = float(np.median(a))
            out["rows"][f"{name}-{prec}"] = {
                "median_ms": med[name],
                "p10_ms": float(np.percentile(a, 10)),
                "p90_ms": float(np.percentile(a, 90)),
                "runs": len(a),
                "round_medians_ms": [float(np.median(r)) for r in lat[(name, prec)]],
            }
        out["rows"][f"speedup-{prec}"] = med["unpruned"] / med["pruned"]
    print(json.dumps(out["rows"], indent=1))
    print(f"MACs reduction {res.macs_reduction:.1%}, channel ratio {res.channel_ratio:.3f}")
    return out


def accuracy(args) -> dict:
    from edgekit.data import load_dataset
    from edgekit.models import load_model, model_normalization
    from edgekit.preprocess import resolve_preprocess
    from edgekit.prune import PruneConfig, parse_layer_ratios, prune_model, recalibrate_bn
    from edgekit.train import TrainConfig, evaluate, fit

    torch.set_num_threads(args.threads)
    ds = load_dataset(f"npz:{SHARED / 'data' / 'cifar10'}")
    teacher, meta = load_model("resnet20", SHARED / "models" / "resnet20-12fca82f.th", 10)
    pre = resolve_preprocess(ds, model_normalization("resnet20"), None, meta)
    wall0 = time.perf_counter()
    train = ds.train
    if args.train_subset:
        from edgekit.data import Split, balanced_indices

        idx = balanced_indices(train.y, args.train_subset // ds.num_classes, seed=0)
        train = Split(train.x[idx], train.y[idx])
    top1_base = evaluate(teacher, ds.test, pre)
    print(f"top-1 before pruning: {top1_base:.2f}% ({len(train)} training images)", flush=True)
    student = copy.deepcopy(teacher)
    x = torch.randn(1, 3, 32, 32)
    per_layer = parse_layer_ratios(args.layer_ratio or "")
    cfg = PruneConfig(
        ratio=args.ratio if args.ratio is not None else args.macs,
        by="channels" if args.ratio is not None else "macs",
        per_layer=per_layer,
        round_to=args.round_to,
        global_pruning=args.global_pruning,
        importance=args.importance,
    )
    res = prune_model(student, x, cfg)
    print(
        f"pruned: MACs {res.before['macs'] / 1e6:.2f}M -> {res.after['macs'] / 1e6:.2f}M "
        f"({res.macs_reduction:.1%}), params {res.before['params']} -> {res.after['params']}",
        flush=True,
    )
    t0 = time.perf_counter()
    top1_0 = evaluate(student, ds.test, pre)
    print(f"top-1 right after pruning: {top1_0:.2f}%", flush=True)
    top1_bn = None
    if args.adaptive_bn:
        recalibrate_bn(student, train, pre)
        top1_bn = evaluate(student, ds.test, pre)
        print(f"top-1 after re-estimating BatchNorm statistics: {top1_bn:.2f}%", flush=True)
    tcfg = TrainConfig(
        epochs=args.epochs or 1000,
        lr=args.lr,
        time_budget_s=None if args.epochs else args.budget_min * 60,
        label_smoothing=0.0,
        kd_alpha=args.alpha,
        kd_temperature=args.temperature,
        kd_features=args.kd_features,
        batch_size=args.batch,
    )
    hist = fit(
        student,
        train,
        pre,
        tcfg,
        hflip=True,
        teacher=teacher if args.alpha > 0 else None,
        progress=lambda e, h: print(
            f"  epoch {h['epoch']}: loss {h['loss']:.3f} "
            f"train {h['train_top1']:.1f}% at {h['seconds']}s",
            flush=True,
        ),
    )
    # the model as fine-tuning left it (edgekit prune's result), then with BatchNorm
    # statistics re-estimated on un-augmented images, for comparison
    top1 = evaluate(student, ds.test, pre)
    state = copy.deepcopy(student.state_dict())
    recalibrate_bn(student, train, pre, augment=(tcfg.crop_padding, True))
    top1_reestimated_aug = evaluate(student, ds.test, pre)
    student.load_state_dict(state)
    recalibrate_bn(student, train, pre)
    top1_reestimated = evaluate(student, ds.test, pre)
    print(
        f"top-1 {top1:.2f}% with the BatchNorm statistics of fine-tuning; with statistics "
        f"re-estimated afterwards on 2,048 training images: {top1_reestimated_aug:.2f}% "
        f"augmented as in training, {top1_reestimated:.2f}% un-augmented",
        flush=True,
    )
    wall = time.perf_counter() - wall0
    out = {
        "prune": res.to_dict(),
        "top1_before": top1_base,
        "top1_after_prune": top1_0,
        "top1_after_adaptive_bn": top1_bn,
        "top1": top1,
        "top1_reestimated_bn": top1_reestimated,
        "top1_reestimated_bn_augmented": top1_reestimated_aug,
        "budget_min": None if args.epochs else args.budget_min,
        "epochs": len(hist),
        "train_images": len(train),
        "threads": args.threads,
        "fine_tune_s": time.perf_counter() - t0,
        "wall_s": wall,
        "history": hist,
        "baseline": 91.73,
        "drop": 91.73 - top1,
        "train_config": tcfg.to_dict(),
    }
    print(
        f"MACs reduction {res.macs_reduction:.1%}; top-1 {top1_base:.2f}% before pruning, "
        f"{top1_0:.2f}% right after, {top1:.2f}% after {len(hist)} epoch(s) of fine-tuning "
        f"(drop {top1_base - top1:.2f} points vs measured, {91.73 - top1:.2f} vs 91.73%); "
        f"wall time {wall / 60:.1f} min ({out['fine_tune_s'] / 60:.1f} min fine-tuning, "
        f"{args.threads} threads)"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--macs", type=float, default=0.5)
    s.add_argument("--round-to", type=int, default=8)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--seconds", type=float, default=3.0)
    s.add_argument("--work", default="/tmp/edgekit-prune-speed")
    a = sub.add_parser("accuracy")
    a.add_argument("--macs", type=float, default=0.5)
    a.add_argument("--round-to", type=int, default=1)
    a.add_argument(
        "--ratio", type=float, default=None, help="channel ratio instead of a MACs target"
    )
    a.add_argument("--layer-ratio", default=None, help="NAME=R[,NAME=R] channel ratios")
    a.add_argument("--global-pruning", action="store_true")
    a.add_argument("--importance", default="l2")
    a.add_argument("--budget-min", type=float, default=20, help="wall-clock budget")
    a.add_argument("--epochs", type=int, default=None, help="fixed epochs (overrides budget)")
    a.add_argument("--train-subset", type=int, default=None, help="class-balanced images")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--lr", type=float, default=0.02)
    a.add_argument("--batch", type=int, default=128)
    a.add_argument("--alpha", type=float, default=0.7)
    a.add_argument("--temperature", type=float, default=4.0)
    a.add_argument(
        "--kd-features",
        type=float,
        default=0.0,
        help="weight of the block-output (feature) distillation term; 0 = logits only",
    )
    a.add_argument(
        "--adaptive-bn",
        action="store_true",
        help="re-estimate BatchNorm statistics right after pruning, before fine-tuning",
    )
    for p in (s, a):
        p.add_argument("--out", default=None)
    args = ap.parse_args()
    out = speed(args) if args.cmd == "speed" else accuracy(args)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
