"""Choose ov-cpu-int8's NNCF defaults by a sweep over several models (issue 18).

For each model (the shared ResNet-20 and ResNet-18 on the full CIFAR-10 test set, and
the embedded ``digits`` default of ``edgekit run`` trained with several seeds) and each
configuration of ``ov-cpu-int8`` (NNCF preset, calibration images per class, the order
the calibration images reach NNCF, overflow fix), the script builds the artifact with
edgekit's own builder and measures top-1 on the test split with edgekit's OpenVINO
runner (1 thread). FP32 is ``ov-cpu`` of the same ONNX. Configs are ranked by their
WORST drop (FP32 minus INT8 top-1) over all models, as docs/targets.md does for
``ort-cpu-int8``.

Determinism: the configs named by ``--repeat`` are built a second time on every model
and the two IRs compared (``same_ir``: the weights and the topology, node names aside);
a differing IR is evaluated too. ``ir_sha256`` in the rows compares builds across runs.

Usage (from the repository root; ``../shared`` holds CIFAR-10 and the weights)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ov_defaults.py sweep --json runs/ov.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ov_defaults.py sweep --models digits-s0 --only perf-32
    .venv/bin/python benchmarks/ov_defaults.py report runs/ov.rows.jsonl [more.rows.jsonl]

Rows are appended to ``<json>.rows.jsonl`` as they are measured (a stopped run keeps
them; ``report`` merges such files, the last row of a (model, config) winning).
Work directories are made once under ``--work-dir`` (``digits-sN`` trained as
``edgekit run --seed N`` does, with torch also seeded with N before the model is built:
``prepare`` alone leaves the initial weights to torch's unseeded generator).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "benchmarks"))

#: label -> options over the ov-cpu-int8 defaults. "-byclass" is the order of main
#: before this sweep (calibration images grouped by class: NNCF's full bias correction
#: then reads classes 0-1 only); the others interleave classes.
CONFIGS: dict[str, dict] = {}
for _preset in ("performance", "mixed"):
    for _k in (32, 64):
        for _order in ("interleaved", "by_class"):
            _lab = f"{_preset[:4] if _preset == 'performance' else _preset}-{_k}"
            _lab += "" if _order == "interleaved" else "-byclass"
            CONFIGS[_lab] = {"preset": _preset, "calib_per_class": _k, "calib_order": _order}
CONFIGS["perf-32-of-off"] = {**CONFIGS["perf-32"], "overflow_fix": "disable"}
CONFIGS["perf-32-of-all"] = {**CONFIGS["perf-32"], "overflow_fix": "enable"}
for _lab in ("perf-32", "perf-64", "mixed-32"):
    CONFIGS[f"{_lab}-minmax"] = {**CONFIGS[_lab], "activation_range": "minmax"}
#: the fixed part of every config (main's defaults for the options not swept)
BASE = {
    "fast_bias_correction": False,
    "overflow_fix": "first_layer_only",
    "activation_range": "mean_minmax",
}

MODELS = tuple(f"digits-s{i}" for i in range(8)) + ("resnet20", "resnet18")


def target(label: str):
    from edgekit.targets import variant

    return variant("ov-cpu-int8", label, {**BASE, **CONFIGS[label]})


def workspace(root: Path, name: str, data: Path):
    """The work directory of one model: ``digits-sN`` trained as ``edgekit run --seed N``
    does; ``resnet20``/``resnet18`` the shared weights (``int8_isa.workspace``)."""
    from int8_isa import workspace as shared_workspace

    from edgekit.pipeline import ModelSpec, Workspace, prepare

    if not name.startswith("digits-s"):
        return shared_workspace(root, name, data)
    ws = Workspace(root / name)
    if ws.record_path.is_file():
        return ws
    import torch

    seed = int(name.removeprefix("digits-s"))
    # prepare() builds the model (its random init) before fit() seeds torch, so without
    # this the initial weights, hence the trained model, differ from run to run
    torch.manual_seed(seed)
    spec = ModelSpec(seed=seed)  # dataset digits, default model, as `edgekit run --seed N`
    return prepare(spec, root / name, force=True, log=lambda *_: None)


def ir_sha256(art: Path) -> str:
    """sha256 of the IR's weights (``model.bin``) and of its topology with the node
    names left out: OpenVINO numbers the nodes it creates from a per-process counter,
    so two builds in one process differ in names alone."""
    h = hashlib.sha256((art / "model.bin").read_bytes())
    h.update(re.sub(rb' name="[^"]*"', b"", (art / "model.xml").read_bytes()))
    return h.hexdigest()


def sweep_model(name: str, root: Path, data: Path, labels, repeat, log, jsonl=None) -> dict:
    from int8_isa import top1_ort

    from edgekit.build import build_target
    from edgekit.manifest import read_manifest
    from edgekit.pipeline import build_context, load_workspace_dataset
    from edgekit.preprocess import Preprocess
    from edgekit.targets import get_target

    t0 = time.perf_counter()
    ws = workspace(root, name, data)
    prep_s = time.perf_counter() - t0
    ds = load_workspace_dataset(ws.record())
    ctx = build_context(ws, ds)
    pre = Preprocess.from_dict(ws.record()["preprocess"])
    x, y = pre.apply(ds.test.x), ds.test.y
    fp32_dir = ws.artifacts / "ovd-ov-cpu"
    if not (fp32_dir / "manifest.json").is_file():
        build_target(get_target("ov-cpu"), ctx, fp32_dir, force=True)
    fp32, fp32_pred = top1_ort(fp32_dir, x, y)
    log(
        f"{name}: {len(y)} test images, FP32 (ov-cpu) top-1 {fp32:.2f} (prepared in {prep_s:.0f} s)"
    )
    rows = []
    for label in labels:
        out = ws.artifacts / f"ovd-{label}"
        t0 = time.perf_counter()
        build_target(target(label), ctx, out, force=True)
        build_s = time.perf_counter() - t0
        int8, pred = top1_ort(out, x, y)
        q = read_manifest(out).get("quantization") or {}
        row = {
            "model": name,
            "label": label,
            "options": {**BASE, **CONFIGS[label]},
            "images": len(y),
            "fp32": fp32,
            "int8": int8,
            "drop": fp32 - int8,
            # finer than top-1 on 450 images: the test images whose INT8 class differs
            # from FP32's (flips either way count)
            "flips": int((pred != fp32_pred).sum()),
            "ir_sha256": ir_sha256(out),
            "bias_correction_images": q.get("bias_correction_images"),
            "build_s": build_s,
        }
        if label in repeat:
            again = ws.artifacts / f"ovd-{label}-again"
            build_target(target(label), ctx, again, force=True)
            row["same_ir"] = ir_sha256(again) == row["ir_sha256"]
            if not row["same_ir"]:
                row["int8_again"], pred2 = top1_ort(again, x, y)
                row["pred_agree"] = float((pred2 == pred).mean() * 100)
        if jsonl:
            with open(jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
        rep = "" if "same_ir" not in row else f"  rebuild same IR: {row['same_ir']}"
        if "int8_again" in row:
            rep += f" (rebuild top-1 {row['int8_again']:.2f}, predictions agree {row['pred_agree']:.2f}%)"
        log(
            f"  {label:18s} int8 {int8:6.2f}  drop {fp32 - int8:+.2f}  "
            f"flips {row['flips']:4d}  build {build_s:5.1f} s{rep}"
        )
        rows.append(row)
    return {"fp32": fp32, "images": len(y), "rows": rows}


def ranking(rows: list[dict]) -> list[dict]:
    """Configs measured on every model, by worst drop (then mean drop), best first."""
    models = sorted({r["model"] for r in rows})
    out = []
    for lab in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == lab]
        drops = {r["model"]: r["drop"] for r in mine}
        if len(drops) != len(models):
            continue
        out.append(
            {
                "label": lab,
                "worst_drop": max(drops.values()),
                "worst_model": max(drops, key=drops.get),
                "mean_drop": sum(drops.values()) / len(drops),
                "drops": drops,
                "flips": {r["model"]: r.get("flips") for r in mine},
            }
        )
    return sorted(out, key=lambda r: (round(r["worst_drop"], 6), r["mean_drop"]))


def _flips(flips: dict) -> str:
    """Test images whose class differs from FP32's, summed over digits / ResNet models."""
    if any(v is None for v in flips.values()):
        return "-"
    d = sum(v for m, v in flips.items() if m.startswith("digits"))
    return f"{d} / {sum(flips.values()) - d}"


def table(rows: list[dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    fp32 = {r["model"]: r["fp32"] for r in rows}
    # cells are INT8 minus FP32 top-1 (points; negative = a loss), FP32 in the header
    head = " | ".join(f"{m} Δ (FP32 {fp32[m]:.2f})" for m in models)
    lines = [
        f"| config | preset | calib/class | order | overflow_fix | act. range | {head} | worst Δ | mean Δ "
        "| flips (digits / ResNets) |",
        "|---|---|---:|---|---|---|" + "---:|" * (len(models) + 3),
    ]
    for r in ranking(rows):
        o = CONFIGS[r["label"]]
        cells = " | ".join(f"{-r['drops'][m]:+.2f}" for m in models)
        lines.append(
            f"| {r['label']} | {o['preset']} | {o['calib_per_class']} | {o['calib_order']} "
            f"| {o.get('overflow_fix', BASE['overflow_fix'])} "
            f"| {o.get('activation_range', BASE['activation_range'])} | {cells} "
            f"| {-r['worst_drop']:+.2f} | {-r['mean_drop']:+.2f} | {_flips(r['flips'])} |"
        )
    return "\n".join(lines)


def read_rows(paths) -> list[dict]:
    last = {}
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                last[(r["model"], r["label"])] = r
    return list(last.values())


def env() -> dict:
    """The CPU (ISA flags), load and the OpenVINO/NNCF versions, for the JSON."""
    from importlib.metadata import version

    from edgekit.harness import cpu_flags

    return {
        "cpu": cpu_flags(),
        "load": os.getloadavg()[0],
        "openvino": version("openvino"),
        "nncf": version("nncf"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("sweep", "report"))
    ap.add_argument("inputs", nargs="*", type=Path, help="report: .rows.jsonl files to merge")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-ov-defaults"))
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10")
    ap.add_argument(
        "--models", default=",".join(MODELS), help="digits-sN (any N), resnet20, resnet18"
    )
    ap.add_argument("--only", default="", help="comma-separated configs (default: all)")
    ap.add_argument(
        "--repeat", default="perf-32,perf-32-byclass", help="configs built twice (determinism)"
    )
    ap.add_argument("--json", type=Path, help="write every figure here (rows also to .rows.jsonl)")
    a = ap.parse_args(argv)

    from edgekit.harness import cpu_flags

    labels = [s for s in a.only.split(",") if s] or list(CONFIGS)
    models = [s for s in a.models.split(",") if s]
    repeat = {s for s in a.repeat.split(",") if s}
    bad = set(labels) - set(CONFIGS)
    bad |= {m for m in models if m not in MODELS and not m.removeprefix("digits-s").isdigit()}
    if bad:
        print(f"unknown config/model {sorted(bad)}; configs {list(CONFIGS)}", file=sys.stderr)
        return 2
    if a.mode == "report":
        rows = read_rows(a.inputs)
        print(table(rows))
        if a.json:
            out = {
                "rows": rows,
                "ranking": ranking(rows),
                "inputs": [str(p) for p in a.inputs],
                "env": env(),
            }
            a.json.write_text(json.dumps(out, indent=2))
        return 0
    if any(m.startswith("resnet") for m in models) and not (a.data / "cifar10-test.npz").is_file():
        print(f"real CIFAR-10 missing in {a.data}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    cpu = cpu_flags()
    load = os.getloadavg()[0]
    print(f"CPU {cpu['cpu']}; ISA {cpu['isa']}; load average {load:.1f}", flush=True)

    def log(msg):
        print(msg, flush=True)

    jsonl = a.json.with_suffix(".rows.jsonl") if a.json else None
    res = {m: sweep_model(m, a.work_dir, a.data, labels, repeat, log, jsonl) for m in models}
    rows = [r for m in res.values() for r in m["rows"]]
    print(table(rows))
    out = {
        "results": res,
        "ranking": ranking(rows),
        "env": {**env(), "load_start": load},
    }
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
