"""INT8 top-1 on a CPU without VNNI, run by the real kernels on an emulated CPU (QEMU).

No AVX2-only machine was lent to this project, and the saturation of ``vpmaddubsw``
(issue 18) happens only there. QEMU's user-mode emulator runs an x86-64 process on
another CPU model: ``qemu-x86_64-static -cpu EPYC`` (AMD Zen 1: AVX2 and FMA, no
AVX-512, no VNNI) answers CPUID as that CPU, so ONNX Runtime's MLAS, oneDNN (OpenVINO)
and FBGEMM (PyTorch) pick their AVX2 kernels, and QEMU's TCG executes them instruction
by instruction, integer saturation included. The top-1 is therefore the one those
kernels give on an AVX2-only CPU; the *latency* under emulation means nothing and is
not reported. (QEMU 7.2 emulates AVX2 but not AVX-512, so the emulated CPU cannot
have VNNI; the native run on this machine is the VNNI side.)

For each model (the shared ResNet-20 and ResNet-18, the embedded ``digits`` default),
the script builds with edgekit, natively: ``ort-cpu`` (FP32), every INT8 CPU target
(``ort-cpu-int8``, ``ov-cpu-int8``, ``ts-fx-int8``) with its defaults, and
``ort-cpu-int8`` as it was before issue 18 (full-range 8-bit weights: the configuration
whose AVX2 top-1 the issue measured on a real AVX2 machine, to check the emulation).
Then one child process per artifact computes the predictions on the test images,
natively and under QEMU, and records the ISA the child saw (numpy's runtime CPU
dispatch, which reads CPUID as the kernels do). Output: top-1 per target and ISA, the
drop from FP32, and the agreement of the predictions between the two ISAs.

Usage (from the repository root; ``../shared`` holds CIFAR-10 and the weights)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qemu_isa.py --models resnet20 --images 2000
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qemu_isa.py --json benchmarks/results/qemu_isa.json

``--images 0`` (default) is the full test split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

QEMU = "qemu-x86_64-static"
QEMU_CPU = "EPYC"
#: label -> (target name, options over its defaults)
TARGETS = {
    "fp32": ("ort-cpu", {}),
    "ort-cpu-int8": ("ort-cpu-int8", {}),
    "ov-cpu-int8": ("ov-cpu-int8", {}),
    "ts-fx-int8": ("ts-fx-int8", {}),
    # ort-cpu-int8 before issue 18: full-range 8-bit weights (relies on VNNI), 3-channel stem
    "ort-cpu-int8-pre18": (
        "ort-cpu-int8",
        {"reduce_range": False, "calib_per_class": 32, "pad_input_channels": False},
    ),
    # the same with the stem padded to 4 channels (the pad changes which weights MLAS pairs)
    "ort-cpu-int8-pre18-pad": ("ort-cpu-int8", {"reduce_range": False, "calib_per_class": 32}),
}


def process_isa() -> dict:
    """What this process's CPUID says (:func:`edgekit.harness.cpuid_features`), not
    /proc/cpuinfo."""
    from edgekit.harness import cpuid_features

    f = cpuid_features() or {}
    return {
        "avx2": bool(f.get("AVX2")),
        "avx512": bool(f.get("AVX512F")),
        "avx512_vnni": bool(f.get("AVX512VNNI")),
    }


def predict(art: Path, images: int, out: Path) -> None:
    """Child: predictions of one artifact on the first ``images`` test images."""
    import numpy as np

    from edgekit.build import open_artifact
    from edgekit.pipeline import Workspace, load_workspace_dataset
    from edgekit.preprocess import Preprocess

    ws = Workspace(art.parents[1])
    rec = ws.record()
    ds = load_workspace_dataset(rec)
    pre = Preprocess.from_dict(rec["preprocess"])
    n = images or len(ds.test.y)
    x = pre.apply(ds.test.x[:n])
    t0 = time.perf_counter()
    r, _ = open_artifact(art, 1)
    try:
        pred = np.concatenate([r(x[i : i + 50]).argmax(1) for i in range(0, n, 50)])
    finally:
        r.close()
    np.save(out / "pred.npy", pred)
    (out / "info.json").write_text(
        json.dumps({"isa": process_isa(), "seconds": time.perf_counter() - t0, "images": n})
    )


def build(name: str, root: Path, data: Path, log) -> tuple[object, dict[str, Path]]:
    from int8_isa import workspace

    from edgekit.build import build_target
    from edgekit.pipeline import build_context, load_workspace_dataset
    from edgekit.targets import get_target, variant

    ws = workspace(root, name, data)
    ds = load_workspace_dataset(ws.record())
    ctx = build_context(ws, ds)
    arts = {}
    for label, (tname, opts) in TARGETS.items():
        out = ws.artifacts / f"qemu-{label}"
        if not (out / "manifest.json").is_file():
            t = variant(tname, label.replace("-", "_"), opts) if opts else get_target(tname)
            t0 = time.perf_counter()
            build_target(t, ctx, out, force=True)
            log(f"  built {label} in {time.perf_counter() - t0:.0f} s")
        arts[label] = out
    return ds, arts


def run_child(art: Path, images: int, emulate: bool, work: Path) -> dict:
    import numpy as np

    out = work / f"{art.name}-{'qemu' if emulate else 'native'}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--predict", str(art), "--images", str(images)]
    cmd += ["--out-dir", str(out)]
    if emulate:
        cmd = [QEMU, "-cpu", QEMU_CPU, *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if res.returncode:
        tail = "\n".join(res.stderr.strip().splitlines()[-5:])
        return {"error": f"exit {res.returncode}: {tail}"}
    info = json.loads((out / "info.json").read_text())
    info["wall_s"] = time.perf_counter() - t0
    info["pred"] = np.load(out / "pred.npy")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="resnet20,resnet18,digits")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--images", type=int, default=0, help="first N test images (0: all)")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "int8_isa")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--emulate-fp32",
        action="store_true",
        help="also run the FP32 model under QEMU (slow: float AVX2 emulation)",
    )
    ap.add_argument("--predict", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.predict:
        predict(args.predict, args.images, args.out_dir)
        return
    if shutil.which(QEMU) is None:
        sys.exit(f"error: {QEMU} not found (Debian: apt install qemu-user-static)")
    from int8_isa import SHARED

    data = SHARED / "data" / "cifar10"
    labels = args.targets.split(",")
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host_isa": process_isa(),
        "emulator": f"{QEMU} -cpu {QEMU_CPU}",
        "qemu_version": subprocess.run(
            [QEMU, "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "load_start": os.getloadavg(),
        "models": {},
    }
    print(f"host ISA {record['host_isa']}; emulated: {record['emulator']}", flush=True)
    for name in args.models.split(","):
        print(f"{name}:", flush=True)
        ds, arts = build(name, args.work, data, lambda m: print(m, flush=True))
        n = args.images or len(ds.test.y)
        y = ds.test.y[:n]
        rows = {}
        for label in labels:
            row = {}
            sides = (("native", False), ("avx2_qemu", True))
            if label == "fp32" and not args.emulate_fp32:  # FP32 needs no INT8 kernel
                sides = sides[:1]
            for side, emulate in sides:
                got = run_child(arts[label], n, emulate, args.work / "qemu" / name)
                if "error" in got:
                    row[side] = {"error": got["error"]}
                    continue
                pred = got.pop("pred")
                row[side] = {**got, "top1": float((pred == y).mean() * 100)}
                row.setdefault("_pred", {})[side] = pred
            preds = row.pop("_pred", {})
            if len(preds) == 2:
                row["agreement"] = float((preds["native"] == preds["avx2_qemu"]).mean() * 100)
            rows[label] = row
            fp32 = rows.get("fp32", {})
            text = []
            for side in ("native", "avx2_qemu"):
                r = row.get(side, {})
                if "top1" in r:
                    ref = fp32.get(side, fp32.get("native", {})).get("top1")
                    d = "" if ref is None else f" ({r['top1'] - ref:+.2f})"
                    text.append(f"{side} {r['top1']:.2f}{d} [{r['wall_s']:.0f}s]")
                else:
                    text.append(f"{side} {r.get('error', '-')}")
            print(f"  {label:20s} " + "  ".join(text)
                  + f"  agreement {row.get('agreement', float('nan')):.2f}%", flush=True)  # fmt: skip
        record["models"][name] = {"images": n, "rows": rows}
    record["load_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
