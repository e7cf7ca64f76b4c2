"""ort-cpu-int8 on every x86 CPU: a defaults sweep scored on VNNI (real) and AVX2 (emulated).

For each model (the shared ResNet-20, the shared ResNet-18, the embedded ``digits``
default of ``edgekit run``) and each configuration of ``ort-cpu-int8``, the script
builds the artifact with edgekit's own builder and measures top-1 on real test
images three ways:

- ``vnni``: ONNX Runtime on this machine (exact int32 accumulation when the CPU has
  AVX-512 VNNI or AVX-VNNI; the script prints the ISA);
- ``emu-exact``: :class:`edgekit.saturation.QdqEmulator` without saturation, checked
  against ONNX Runtime (agreement of the predictions);
- ``emu-sat``: the emulator with MLAS's saturating int16 pair sums (``vpmaddubsw``),
  i.e. the same artifact on a CPU without VNNI;
- ``avx2`` (the estimate used for the choice): the real VNNI top-1 plus
  ``emu-sat - emu-exact``, so the emulator's own rounding differences from ONNX
  Runtime cancel; with no saturated sum it equals the VNNI top-1 (the integer sums are
  then the same on both kinds of CPU).

It also counts the weight pairs that can saturate (:func:`risky_weight_pairs`) and
the pair sums that did saturate. A configuration with no such pair is not emulated
(unless ``--emulate-all``): its integer sums, hence its top-1, are the same on both
kinds of CPU. The choice is the configuration with the smallest
WORST drop (FP32 ONNX Runtime top-1 minus INT8 top-1) over models and both ISAs.

Usage (from the repository root; ``../shared`` holds CIFAR-10 and the weights)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_isa.py sweep --images 2000 --json sweep.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_isa.py sweep --images 0 --only default,rr
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_isa.py latency --only default,rr
    .venv/bin/python benchmarks/int8_isa.py report sweep.json more.json   # merge, rank
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_isa.py bounds --only default  # pairing

``--images 0`` means the full test split. ``latency`` times the configurations on
ResNet-18 and ResNet-20 in interleaved rounds (1 thread, batch 1) and reports each
one's per-round ratio to ``default``. Latency on a CPU without VNNI is not
measured by this script (it only emulates accuracy there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "benchmarks"))

#: label -> options over the ort-cpu-int8 defaults of main before issue 18.
BASE = {"reduce_range": False, "calibration_method": "minmax", "calib_per_class": 32}
CONFIGS: dict[str, dict] = {
    "default": {},  # MinMax, asymmetric U8 activations, 8-bit S8 weights (pre-issue-18)
    "percentile": {"calibration_method": "percentile"},
    "entropy": {"calibration_method": "entropy"},
    "sym-act": {"activation_symmetric": True},
    "rr": {"reduce_range": True},
    "rr-percentile": {"reduce_range": True, "calibration_method": "percentile"},
    "rr-entropy": {"reduce_range": True, "calibration_method": "entropy"},
    "rr-sym-act": {"reduce_range": True, "activation_symmetric": True},
    "rr-calib-16": {"reduce_range": True, "calib_per_class": 16},
    "rr-calib-64": {"reduce_range": True, "calib_per_class": 64},
    "rr-no-preopt": {"reduce_range": True, "pre_process_optimize": False},
    # S8S8: not the U8S8 vpmaddubsw path; its AVX2 top-1 is not emulated (MLAS's S8S8
    # path on AVX2 unverified), so it is measured on VNNI and for latency only
    "s8s8": {"activation_type": "QInt8"},
}

MODELS = {
    "resnet20": ("resnet20", "resnet20-12fca82f.th", "npz"),
    "resnet18": ("resnet18", "resnet18-cifar10-1ff45430.pt", "npz"),
    "digits": (None, None, "digits"),
}


def target(label: str):
    from edgekit.targets import variant

    return variant("ort-cpu-int8", label, {**BASE, **CONFIGS[label]})


def workspace(root: Path, name: str, data: Path):
    """The edgekit work directory of one model (made once: export, or training for digits)."""
    from edgekit.pipeline import ModelSpec, Workspace, prepare

    ws = Workspace(root / name)
    if ws.record_path.is_file():
        return ws
    model, weights, kind = MODELS[name]
    if kind == "digits":
        spec = ModelSpec()  # what `edgekit run` with no arguments trains
    else:
        spec = ModelSpec(
            dataset=f"npz:{data}", model=model, weights=str(SHARED / "models" / weights)
        )
    return prepare(spec, root / name, force=True, log=lambda *_: None)


def top1_ort(art: Path, x, y) -> tuple[float, object]:
    import numpy as np

    from edgekit.build import open_artifact

    r, _ = open_artifact(art, 1)
    try:
        pred = np.concatenate([r(x[i : i + 100]).argmax(1) for i in range(0, len(x), 100)])
    finally:
        r.close()
    return float((pred == y).mean() * 100), pred


def sweep_model(
    name: str, root: Path, data: Path, labels, images: int, log, emulate_all=False, jsonl=None
) -> dict:
    from edgekit.build import build_target
    from edgekit.pipeline import build_context, load_workspace_dataset
    from edgekit.preprocess import Preprocess
    from edgekit.saturation import emulate_top1, risky_weight_pairs
    from edgekit.targets import get_target

    ws = workspace(root, name, data)
    ds = load_workspace_dataset(ws.record())
    ctx = build_context(ws, ds)
    pre = Preprocess.from_dict(ws.record()["preprocess"])
    n = images or len(ds.test.y)
    x, y = pre.apply(ds.test.x[:n]), ds.test.y[:n]
    fp32_dir = ws.artifacts / "isa-ort-cpu"
    if not (fp32_dir / "manifest.json").is_file():
        build_target(get_target("ort-cpu"), ctx, fp32_dir, force=True)
    fp32, _ = top1_ort(fp32_dir, x, y)
    log(f"{name}: {len(y)} test images, FP32 (ONNX Runtime) top-1 {fp32:.2f}")
    rows = []
    for label in labels:
        out = ws.artifacts / f"isa-{label}"
        t0 = time.perf_counter()
        if not (out / "manifest.json").is_file():
            build_target(target(label), ctx, out, force=True)
        build_s = time.perf_counter() - t0
        vnni, pred = top1_ort(out, x, y)
        risky = risky_weight_pairs(out / "model.onnx")
        t0 = time.perf_counter()
        s8 = target(label).options["activation_type"] == "QInt8"
        if s8:
            exact = sat = None
        elif risky["risky"] or emulate_all:
            exact = emulate_top1(out / "model.onnx", x, y, saturate=False)
            sat = emulate_top1(out / "model.onnx", x, y, saturate=True)
        else:  # nothing can saturate: the integer sums, hence top-1, are VNNI's exactly
            exact = sat = None
        emu_s = time.perf_counter() - t0
        stats = sat["stats"] if sat else {}
        row = {
            "model": name,
            "label": label,
            "options": CONFIGS[label],
            "images": len(y),
            "fp32": fp32,
            "vnni": vnni,
            "avx2_emulated": sat["top1"] if sat else None,
            "emu_exact": exact["top1"] if exact else None,
            "emu_agree": float((exact["pred"] == pred).mean() * 100) if exact else None,
            # the real VNNI top-1 plus the emulated effect of saturation: the emulator's own
            # rounding differences from ONNX Runtime cancel out (0 when nothing saturates)
            "avx2_estimate": None if s8 else vnni + (sat["top1"] - exact["top1"] if sat else 0.0),
            "risky_pairs": risky["risky"],
            "weight_pairs": risky["pairs"],
            "saturated_sums": sum(v["saturated"] for v in stats.values()),
            "pair_sums": sum(v["pairs"] for v in stats.values()),
            "saturated_by_node": {k: v for k, v in stats.items() if v["saturated"]},
            "build_s": build_s,
            "emulate_s": emu_s,
        }
        if jsonl:
            with open(jsonl, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        agree = f"{row['emu_agree']:.2f}%" if exact else "n/a (not emulated)"
        a2 = row["avx2_estimate"]
        log(
            f"  {label:14s} vnni {vnni:6.2f} ({vnni - fp32:+.2f})  "
            f"avx2~ {_f(a2)} ({_f(None if a2 is None else a2 - fp32, '+.2f')})  "
            f"emu-exact agrees {agree}  risky pairs {risky['risky']}  "
            f"saturated {row['saturated_sums']}/{row['pair_sums']}  "
            f"build {build_s:.0f}s emu {emu_s:.0f}s"
        )
        rows.append(row)
    return {"fp32": fp32, "images": len(y), "rows": rows}


def est(r: dict) -> float:
    """The AVX2 top-1 estimate of a row (``avx2_estimate``; computed for older JSON)."""
    if "avx2_estimate" in r:
        return r["avx2_estimate"]
    if r.get("avx2_emulated") is None:
        return None
    return r["vnni"] + r["avx2_emulated"] - r["emu_exact"]


def _f(v, fmt: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{fmt}}{suffix}"


def choose(results: dict) -> list[tuple[float, str]]:
    """(worst drop over models and ISAs, label), best first."""
    labels = {r["label"] for m in results.values() for r in m["rows"]}
    worst = []
    for lab in labels:
        drops = [
            m["fp32"] - v
            for m in results.values()
            for r in m["rows"]
            if r["label"] == lab
            for v in (r["vnni"], est(r))
            if v is not None
        ]
        if len(drops) == 2 * len(results):
            worst.append((max(drops), lab))
    return sorted(worst)


def table(results: dict) -> str:
    lines = [
        "| model | config | images | FP32 | VNNI (real) | Δ | AVX2 (emulated) | Δ "
        "| emulator sat / exact | emu=ORT | risky weight pairs | saturated pair sums |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, m in results.items():
        for r in m["rows"]:
            lines.append(
                f"| {name} | {r['label']} | {r['images']} | {m['fp32']:.2f} | {r['vnni']:.2f} "
                f"| {r['vnni'] - m['fp32']:+.2f} | {_f(est(r))} "
                f"| {_f(None if est(r) is None else est(r) - m['fp32'], '+.2f')} "
                f"| {_f(r['avx2_emulated'])} / {_f(r['emu_exact'])} | {_f(r['emu_agree'], suffix='%')} "
                f"| {r['risky_pairs']} | {r['saturated_sums'] / max(r['pair_sums'], 1):.2e} |"
            )
    return "\n".join(lines)


def latency(root: Path, data: Path, labels, rounds: int, seconds: float, log) -> dict:
    """Per-round p50 of each config on ResNet-18/20, and its ratio to ``default``."""
    import statistics

    from edgekit.build import open_artifact
    from edgekit.harness import BenchConfig, measure_latency
    from edgekit.pipeline import load_workspace_dataset
    from edgekit.preprocess import Preprocess

    out = {}
    for name in ("resnet18", "resnet20"):
        ws = workspace(root, name, data)
        ds = load_workspace_dataset(ws.record())
        pre = Preprocess.from_dict(ws.record()["preprocess"])
        x = pre.apply(ds.test.x[:1])
        labs = ["default"] + [lab for lab in labels if lab != "default"]
        runners = {}
        for lab in labs:
            art = ws.artifacts / f"isa-{lab}"
            if not (art / "manifest.json").is_file():
                log(f"{name}: {lab} not built (run sweep first); skipped")
                continue
            runners[lab] = open_artifact(art, 1)[0]
        cfg = BenchConfig(warmup_queries=20, min_queries=100, min_duration_s=seconds)
        p50 = {lab: [] for lab in runners}
        for i in range(rounds):
            order = list(runners)[i % len(runners) :] + list(runners)[: i % len(runners)]
            for lab in order:
                lat, _ = measure_latency(runners[lab], x, cfg)
                p50[lab].append(lat["p50"])
        res = {}
        for lab, v in p50.items():
            ratio = [a / b for a, b in zip(v, p50["default"], strict=True)]
            res[lab] = {
                "p50_ms": statistics.median(v),
                "p50_min_max": [min(v), max(v)],
                "ratio_vs_default": statistics.median(ratio),
                "ratio_min_max": [min(ratio), max(ratio)],
            }
            log(
                f"{name} {lab:14s} p50 {res[lab]['p50_ms']:.3f} ms ({min(v):.3f}-{max(v):.3f}) "
                f"ratio vs default {res[lab]['ratio_vs_default']:.3f} "
                f"({min(ratio):.3f}-{max(ratio):.3f})"
            )
        for r in runners.values():
            r.close()
        out[name] = res
    return out


def bounds(name: str, root: Path, data: Path, label: str, images: int, log) -> dict:
    """The emulated AVX2 top-1 of one built config under each pairing order (a bound on
    our reading of MLAS's reduction order: ``hwc`` is the one the source shows)."""
    from edgekit.pipeline import load_workspace_dataset
    from edgekit.preprocess import Preprocess
    from edgekit.saturation import emulate_top1

    ws = workspace(root, name, data)
    ds = load_workspace_dataset(ws.record())
    pre = Preprocess.from_dict(ws.record()["preprocess"])
    n = images or len(ds.test.y)
    x, y = pre.apply(ds.test.x[:n]), ds.test.y[:n]
    art = ws.artifacts / f"isa-{label}" / "model.onnx"
    out = {"exact": emulate_top1(art, x, y, saturate=False)["top1"]}
    for order in ("hwc", "hwc_pad", "chw"):
        r = emulate_top1(art, x, y, saturate=True, order=order)
        sat = sum(v["saturated"] for v in r["stats"].values())
        out[order] = r["top1"]
        log(
            f"{name} {label} order {order:8s} emulated AVX2 top-1 {r['top1']:.2f} "
            f"(exact {out['exact']:.2f}), saturated sums {sat}"
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("sweep", "latency", "report", "bounds"))
    ap.add_argument("inputs", nargs="*", type=Path, help="report: sweep JSON files to merge")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-int8-isa"))
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10")
    ap.add_argument("--models", default="resnet20,resnet18,digits")
    ap.add_argument("--only", default="", help="comma-separated configs (default: all)")
    ap.add_argument("--images", type=int, default=2000, help="test images (0 = all)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0, help="latency seconds per round")
    ap.add_argument("--json", type=Path, help="write every figure here (rows also to .rows.jsonl)")
    ap.add_argument(
        "--emulate-all",
        action="store_true",
        help="emulate configs that cannot saturate too (to check the emulator against ORT)",
    )
    a = ap.parse_args(argv)

    import torch

    from edgekit.harness import cpu_flags

    torch.set_num_threads(1)
    labels = [s for s in a.only.split(",") if s] or list(CONFIGS)
    models = [s for s in a.models.split(",") if s]
    bad = (set(labels) - set(CONFIGS)) | (set(models) - set(MODELS))
    if bad:
        print(f"unknown config/model {sorted(bad)}; configs {list(CONFIGS)}", file=sys.stderr)
        return 2
    if any(MODELS[m][2] == "npz" for m in models) and not (a.data / "cifar10-test.npz").is_file():
        print(f"real CIFAR-10 missing in {a.data}", file=sys.stderr)
        return 2
    cpu = cpu_flags()
    load = os.getloadavg()[0]
    print(f"CPU {cpu['cpu']}; ISA {cpu['isa']}; load average {load:.1f}", flush=True)

    def log(msg):
        print(msg, flush=True)

    if a.mode == "report":
        res = {}
        for p in a.inputs:
            res.update(json.loads(p.read_text())["results"])
        print(table(res))
        for worst, lab in choose(res):
            print(f"worst drop {worst:+.2f}  {lab}")
        return 0
    if a.mode == "bounds":
        lab = labels[0] if a.only else "default"
        out = {"bounds": {m: bounds(m, a.work_dir, a.data, lab, a.images, log) for m in models}}
    elif a.mode == "latency":
        out = {"latency": latency(a.work_dir, a.data, labels, a.rounds, a.seconds, log)}
    else:
        jsonl = a.json.with_suffix(".rows.jsonl") if a.json else None
        res = {
            m: sweep_model(m, a.work_dir, a.data, labels, a.images, log, a.emulate_all, jsonl)
            for m in models
        }
        print(table(res))
        ranking = choose(res)
        for worst, lab in ranking:
            print(f"worst drop {worst:+.2f}  {lab}")
        out = {"results": res, "ranking": ranking}
    out["env"] = {"cpu": cpu, "load_start": load, "load_end": os.getloadavg()[0]}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
