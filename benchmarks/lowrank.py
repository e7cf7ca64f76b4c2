"""The SVD bar of issue 17: low-rank factorization at -50% MACs on the shared ResNet-20.

Accuracy (real CIFAR-10 and the shared ResNet-20 in ../shared; about an hour on 1 thread)::

    .venv/bin/python benchmarks/lowrank.py accuracy --epochs 8 --out runs/lowrank-acc.json \\
        --save runs/resnet20-lowrank50.pt

  ``edgekit.compress.lowrank`` at ``--macs 0.5`` (a global energy threshold searched so
  that >= 50% of MACs go), then the steps of ``edgekit.compress.driver.compress_model``
  one by one so the top-1 is measured between them: BatchNorm statistics re-estimated
  (adaptive BN), KD fine-tuning from the unfactorized model (logits, alpha 0.7, T 4, no
  label smoothing, SGD lr 0.04 cosine over ``--epochs``, batch 128: the recipe of
  ``benchmarks/pruning.py accuracy``, whose channel-pruned ResNet-20 at -50.1% MACs
  reached 90.18% after 8 epochs), statistics re-estimated on augmented images. Top-1 on
  all 10,000 test images before, right after factorizing, after adaptive BN and at the
  end. Quick check: ``--epochs 1 --train-subset 2000``. ``--allocation zhang`` chooses
  the ranks by Zhang et al.'s greedy instead of the global threshold (the lowrank option);
  ``--method`` is ``responses`` by default (each factorization fit on the layer's responses
  to 256 training images, Zhang et al. 2015's linear solution); ``--method weights`` takes
  the SVD of the weights, as every run before the fifth session did.

Rank allocation, no fine-tuning (minutes; ``--model resnet18`` for the shared ResNet-18)::

    .venv/bin/python benchmarks/lowrank.py allocation --model resnet20 --out runs/alloc20.json
    .venv/bin/python benchmarks/lowrank.py allocation --model resnet18 --test-images 2000 \
        --out runs/alloc18.json

  Both rules of ``lowrank``'s ``allocation`` option (``energy``: one global energy
  threshold; ``zhang``: Zhang et al.'s greedy; ``--allocations``), for each ``--methods``
  (``weights``, ``responses``; default weights) at ``--macs`` (default 0.5), with ranks
  exact and rounded to 8: the ranks, the MACs removed, ``sum(log(energy kept))`` (the
  objective Zhang et al. maximise) and the top-1 right after factorizing and after
  re-estimating BatchNorm statistics on 2,048 training images (adaptive BN, as the
  accuracy run does before fine-tuning), on the first ``--test-images`` test images
  (default all 10,000).

Speed (weights do not matter for latency; the shared weights are used when present so
the ranks are the ones the accuracy run gets)::

    .venv/bin/python benchmarks/lowrank.py speed --rounds 7 --out runs/lowrank-speed.json

  ResNet-20 unpruned, SVD-factorized at -50% MACs and channel-pruned at -50.1% MACs (the
  model of the pruning benchmark: ratio 0.5, layer1.0.conv1 0.5625, layer3.0.conv1
  0.515625, round_to 1), each exported to ONNX and built as the ``ort-cpu`` target
  (``edgekit.build``), then timed by ``edgekit.benchmark`` (the harness, 1 thread,
  batch 1) in interleaved rounds; reported: per-model median of the round p50s, and the
  ratio to the channel-pruned model per round (median, min-max).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "models" / "resnet20-12fca82f.th"
WEIGHTS18 = SHARED / "models" / "resnet18-cifar10-1ff45430.pt"
CHANNEL_LAYER_RATIOS = "layer1.0.conv1=0.5625,layer3.0.conv1=0.515625"


def _load():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from edgekit.data import load_dataset
    from edgekit.models import load_model, model_normalization
    from edgekit.preprocess import resolve_preprocess

    ds = load_dataset(f"npz:{SHARED / 'data' / 'cifar10'}")
    model, meta = load_model("resnet20", WEIGHTS, 10)
    pre = resolve_preprocess(ds, model_normalization("resnet20"), None, meta)
    return ds, model, pre


def accuracy(args) -> dict:
    from edgekit.compress import get_technique
    from edgekit.models import save_checkpoint
    from edgekit.prune import model_stats, recalibrate_bn
    from edgekit.train import TrainConfig, evaluate, fit

    torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    ds, teacher, pre = _load()
    train = ds.train
    if args.train_subset:
        from edgekit.data import Split, balanced_indices

        idx = balanced_indices(train.y, args.train_subset // ds.num_classes, seed=0)
        train = Split(train.x[idx], train.y[idx])
    top1_base = evaluate(teacher, ds.test, pre)
    print(f"top-1 before factorizing: {top1_base:.2f}% ({len(train)} training images)", flush=True)
    student = copy.deepcopy(teacher)
    x = torch.zeros(1, 3, 32, 32)
    tech = get_technique("lowrank")
    opts = {"energy": args.energy} if args.energy else {}
    opts["round_to"] = args.round_to
    opts["allocation"] = args.allocation
    opts["method"] = args.method
    level = None if args.energy else args.macs
    tech.check(level, opts)
    before = model_stats(student, x)
    rec = tech.apply(student, _probe(tech, opts, train, pre), level, opts, print)
    after = model_stats(student, x)
    red = 1 - after["macs"] / before["macs"]
    print(
        f"factorized: MACs {before['macs'] / 1e6:.2f}M -> {after['macs'] / 1e6:.2f}M "
        f"({red:.1%}), params {before['params']} -> {after['params']}; ranks {rec['ranks']}",
        flush=True,
    )
    top1_0 = evaluate(student, ds.test, pre)
    print(f"top-1 right after factorizing: {top1_0:.2f}%", flush=True)
    tcfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        label_smoothing=0.0,
        kd_alpha=args.alpha,
        kd_temperature=args.temperature,
        batch_size=args.batch,
    )
    recalibrate_bn(student, train, pre, seed=tcfg.seed)
    top1_bn = evaluate(student, ds.test, pre)
    print(f"top-1 after re-estimating BatchNorm statistics: {top1_bn:.2f}%", flush=True)
    t0 = time.perf_counter()
    hist = fit(
        student,
        train,
        pre,
        tcfg,
        hflip=True,
        teacher=teacher,
        progress=lambda e, h: print(
            f"  epoch {h['epoch']}: loss {h['loss']:.3f} train {h['train_top1']:.1f}% "
            f"at {h['seconds']}s, load {os.getloadavg()[0]:.1f}",
            flush=True,
        ),
    )
    tune_s = time.perf_counter() - t0
    top1_ft = evaluate(student, ds.test, pre)
    recalibrate_bn(student, train, pre, seed=tcfg.seed, augment=(tcfg.crop_padding, True))
    rec.update(tech.finalize(student))
    top1 = evaluate(student, ds.test, pre)
    wall = time.perf_counter() - wall0
    print(
        f"top-1 {top1:.2f}% (BN statistics re-estimated on augmented images, as "
        f"compress_model does; {top1_ft:.2f}% with those of fine-tuning)",
        flush=True,
    )
    record = {
        "technique": "lowrank",
        "level": level,
        **rec,
        "before": before,
        "after": after,
        "test_top1": top1,
    }
    if args.save:
        save_checkpoint(
            args.save,
            student,
            "resnet20",
            10,
            force=True,
            classes=list(ds.classes),
            preprocess=pre.to_dict(),
            dataset=ds.name,
            history=hist,
            finetune_config=tcfg.to_dict(),
            compression=record,
        )
    out = {
        "record": record,
        "macs_reduction": red,
        "top1_before": top1_base,
        "top1_after_factorize": top1_0,
        "top1_after_adaptive_bn": top1_bn,
        "top1_finetune_bn_stats": top1_ft,
        "top1": top1,
        "epochs": len(hist),
        "train_images": len(train),
        "threads": args.threads,
        "fine_tune_s": tune_s,
        "wall_s": wall,
        "load_avg_end": os.getloadavg(),
        "history": hist,
        "bar": 89.73,
        "met": top1 >= 89.73,
        "train_config": tcfg.to_dict(),
    }
    print(
        f"MACs -{red:.1%}; top-1 {top1_base:.2f}% before, {top1_0:.2f}% right after "
        f"factorizing, {top1_bn:.2f}% after adaptive BN, {top1:.2f}% after {len(hist)} "
        f"epoch(s) of KD fine-tuning (bar 89.73%: {'met' if out['met'] else 'missed'}); "
        f"wall {wall / 60:.1f} min ({tune_s / 60:.1f} min fine-tuning, {args.threads} thread(s))",
        flush=True,
    )
    return out


def _probe(tech, opts: dict, train, pre) -> torch.Tensor:
    """What compress_model passes to ``apply`` (seed 0, TrainConfig's default)."""
    from edgekit.compress.driver import technique_input

    return technique_input(tech, opts, train, pre, 0)


def allocation(args) -> dict:
    """Compare the two rank allocations without fine-tuning (see the module doc)."""
    import math

    from edgekit.compress import get_technique
    from edgekit.data import Split, load_dataset
    from edgekit.models import load_model, model_normalization
    from edgekit.preprocess import resolve_preprocess
    from edgekit.prune import model_stats, recalibrate_bn
    from edgekit.train import evaluate

    torch.set_num_threads(args.threads)
    ds = load_dataset(f"npz:{SHARED / 'data' / 'cifar10'}")
    weights = WEIGHTS if args.model == "resnet20" else WEIGHTS18
    base, meta = load_model(args.model, weights, 10)
    pre = resolve_preprocess(ds, model_normalization(args.model), None, meta)
    n = args.test_images or len(ds.test)
    test = Split(ds.test.x[:n], ds.test.y[:n])
    x = torch.zeros(1, 3, 32, 32)
    macs0 = model_stats(base, x)["macs"]
    out = {"model": args.model, "macs": args.macs, "test_images": n, "rows": []}
    out["top1_unfactorized"] = evaluate(base, test, pre)
    print(f"{args.model}: top-1 {out['top1_unfactorized']:.2f}% unfactorized "
          f"(first {n} test images)", flush=True)  # fmt: skip
    tech = get_technique("lowrank")
    for round_to, alloc, method in itertools.product((1, 8), args.allocations, args.methods):
        m = copy.deepcopy(base)
        opts = {"allocation": alloc, "round_to": round_to, "method": method}
        probe = _probe(tech, opts, ds.train, pre)
        rec = tech.apply(m, probe, args.macs, opts, lambda *_: None)
        red = 1 - model_stats(m, x)["macs"] / macs0
        top1_0 = evaluate(m, test, pre)
        recalibrate_bn(m, ds.train, pre, seed=0)
        top1_bn = evaluate(m, test, pre)
        obj = sum(math.log(v) for v in rec["energy_kept"].values())
        row = {
            "method": method,
            "allocation": alloc,
            "round_to": round_to,
            "macs_reduction": red,
            "sum_log_energy_kept": obj,
            "top1_after_factorize": top1_0,
            "top1_after_adaptive_bn": top1_bn,
            "ranks": rec["ranks"],
            "full_ranks": rec["full_ranks"],
        }
        out["rows"].append(row)
        print(f"{method:9s} {alloc:6s} round_to {round_to}: MACs -{red:.1%}, sum log energy "
              f"{obj:.3f}, top-1 {top1_0:.2f}% -> {top1_bn:.2f}% after adaptive BN; "
              f"ranks {list(rec['ranks'].values())}", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--macs", type=float, default=0.5, help="fraction of MACs removed")
    a.add_argument("--energy", type=float, default=None, help="energy threshold instead")
    a.add_argument(
        "--round-to", type=int, default=8, help="rank multiple (1: exact ranks, as before)"
    )
    a.add_argument(
        "--allocation",
        choices=["energy", "zhang"],
        default="energy",
        help="rank allocation for --macs (zhang: Zhang et al.'s greedy on weight energy)",
    )
    a.add_argument(
        "--method",
        choices=["weights", "responses"],
        default="responses",
        help="what the factorization reconstructs (responses: Zhang et al. 2015, data-driven)",
    )
    a.add_argument("--epochs", type=int, default=8)
    a.add_argument("--train-subset", type=int, default=None, help="class-balanced images")
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--lr", type=float, default=0.04)
    a.add_argument("--batch", type=int, default=128)
    a.add_argument("--alpha", type=float, default=0.7)
    a.add_argument("--temperature", type=float, default=4.0)
    a.add_argument("--save", default=None, help="write the result as an edgekit checkpoint")
    al = sub.add_parser("allocation")
    al.add_argument("--model", choices=["resnet20", "resnet18"], default="resnet20")
    al.add_argument("--macs", type=float, default=0.5)
    al.add_argument("--test-images", type=int, default=None, help="first N (default all)")
    al.add_argument("--threads", type=int, default=1)
    al.add_argument("--allocations", type=lambda t: t.split(","), default=["energy", "zhang"])
    al.add_argument("--methods", type=lambda t: t.split(","), default=["weights"])
    s = sub.add_parser("speed")
    s.add_argument("--macs", type=float, default=0.5)
    s.add_argument("--round-to", type=int, default=8, help="rank multiple (1: exact ranks)")
    s.add_argument("--rounds", type=int, default=7)
    s.add_argument("--model", choices=["resnet20", "resnet18"], default="resnet20")
    s.add_argument("--min-duration", type=float, default=2.0, help="seconds per row per round")
    s.add_argument("--work", default="/tmp/edgekit-lowrank-speed")
    s.add_argument("--checkpoint", default=None, help="time this factorized checkpoint")
    for p in (a, al, s):
        p.add_argument("--out", default=None)
    args = ap.parse_args()
    out = {"accuracy": accuracy, "allocation": allocation, "speed": speed}[args.cmd](args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))


def _models(macs: float, model: str = "resnet20", round_to: int = 8, checkpoint=None):
    """The unpruned model, SVD at ``macs``, and channel pruning at about the same MACs.

    With ``checkpoint`` (a factorized edgekit checkpoint, e.g. ``accuracy --save``'s) that
    model is the SVD one, instead of factorizing with the default options here.

    ResNet-20: pruning.py's -50.1% model (channel ratios, round_to 1). ResNet-18 (the
    shared canonical one): a MACs target of ``macs`` with round_to 8 (pruning.py speed).
    """
    from edgekit.compress import get_technique
    from edgekit.models import build_model, load_model
    from edgekit.prune import PruneConfig, model_stats, parse_layer_ratios, prune_model

    torch.manual_seed(0)
    weights = WEIGHTS if model == "resnet20" else WEIGHTS18
    if weights.is_file():
        base, _ = load_model(model, weights, 10)
    else:  # latency does not depend on the weights; the SVD ranks do (a little)
        base = build_model(model, 10).eval()
    x = torch.zeros(1, 3, 32, 32)
    if checkpoint:
        svd, meta = load_model(None, checkpoint, None)
        rec = meta.get("compression") or {}
    else:
        svd = copy.deepcopy(base)
        rec = get_technique("lowrank").apply(
            svd, x, macs, {"round_to": round_to, "method": "weights"}, print
        )
    chan = copy.deepcopy(base)
    if model == "resnet20":
        pcfg = PruneConfig(
            ratio=0.5, per_layer=parse_layer_ratios(CHANNEL_LAYER_RATIOS), round_to=1
        )
    else:
        pcfg = PruneConfig(ratio=macs, by="macs", round_to=8)
    prune_model(chan, x, pcfg)
    models = {"unpruned": base, "svd": svd.eval(), "channel": chan.eval()}
    stats = {k: model_stats(m, x) for k, m in models.items()}
    return models, stats, rec


def speed(args) -> dict:
    """Build ``ort-cpu`` for each model with edgekit and time them with the harness."""
    from edgekit import api
    from edgekit.harness import BenchConfig

    torch.set_num_threads(1)
    models, stats, rec = _models(args.macs, args.model, args.round_to, args.checkpoint)
    base = stats["unpruned"]["macs"]
    for k, st in stats.items():
        print(f"{k}: {st['macs'] / 1e6:.2f}M MACs (-{1 - st['macs'] / base:.1%}), "
              f"{st['params']} params", flush=True)  # fmt: skip
    dataset = f"npz:{SHARED / 'data' / 'cifar10'}"
    work = Path(args.work)
    arts = {}
    for k, m in models.items():
        w = work / k
        api.export(m, dataset, work_dir=w, force=True, log=lambda *_: None)
        built = api.build(w, ["ort-cpu"], force=True, errors="raise", log=lambda *_: None)
        arts[k] = built.artifacts[0].path
    cfg = BenchConfig(
        warmup_queries=50,
        min_queries=200 * args.rounds,
        min_duration_s=args.min_duration * args.rounds,
        batch_sizes=(1,),
        throughput_min_s=0.0,
        accuracy=False,
        rounds=args.rounds,
    )
    t0 = time.time()
    res = api.benchmark(
        artifacts=[str(arts[k]) for k in models],
        threads=1,
        config=cfg,
        accuracy=False,
        baseline=False,
        log=lambda *_: None,
    )
    rows = {k: r for k, r in zip(models, res.rows, strict=True)}
    rp = {k: np.array(r["latency_ms"]["rounds_p50"]) for k, r in rows.items()}
    out = {
        "model": args.model,
        "stats": stats,
        "svd_ranks": rec["ranks"],
        "environment": res.environment,
        "config": cfg.to_dict(),
        "seconds": time.time() - t0,
        "rows": {
            k: {
                "p50_ms": r["latency_ms"]["p50"],
                "p90_ms": r["latency_ms"]["p90"],
                "rounds_p50_ms": r["latency_ms"]["rounds_p50"],
                "size_mb": r.get("size_mb"),
                "status": r.get("status"),
            }
            for k, r in rows.items()
        },
    }
    for k in ("svd", "unpruned"):
        ratio = rp[k] / rp["channel"]  # per round: > 1 means slower than channel pruning
        out[f"{k}_over_channel"] = {
            "median": float(np.median(ratio)),
            "min": float(ratio.min()),
            "max": float(ratio.max()),
            "per_round": [round(float(v), 4) for v in ratio],
        }
    for k, r in out["rows"].items():
        print(f"{k:9s} p50 {r['p50_ms']:.4f} ms, p90 {r['p90_ms']:.4f} ms, round p50s "
              f"{', '.join(f'{v:.4f}' for v in r['rounds_p50_ms'])}")  # fmt: skip
    for k in ("svd", "unpruned"):
        o = out[f"{k}_over_channel"]
        print(f"{k} / channel p50, per round: median {o['median']:.3f} "
              f"(min {o['min']:.3f}, max {o['max']:.3f})")  # fmt: skip
    load = res.environment.get("load") if isinstance(res.environment, dict) else None
    lavg = [(load or {}).get(k, {}).get("loadavg") for k in ("start", "end")]
    print(f"{args.model}, ort-cpu, batch 1, 1 thread, {args.rounds} interleaved rounds; "
          f"load average at start/end {lavg}")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
