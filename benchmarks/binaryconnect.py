"""BinaryConnect on the shared ResNet-20, measured (issue 17, deliver 4).

Train (real CIFAR-10, the shared ResNet-20 weights in ../shared; 1 thread)::

    .venv/bin/python benchmarks/binaryconnect.py train --epochs 3 --out runs/binaryconnect

  BinaryConnect (Courbariaux, Bengio, David, NeurIPS 2015): every convolution except the
  first is computed with binary weights ``alpha * sign(w)``; the real-valued weights are
  kept, clipped to [-1, 1] before every forward pass (the paper clips after every update:
  the same weights reach the next forward), and receive the gradient through the
  straight-through estimator ``d sign(w)/dw = 1 for |w| <= 1`` (Hubara et al. 2016's
  form of the paper's estimator). ``alpha`` is one scale per output channel, the mean
  absolute value of that channel's real weights (XNOR-Net's "BWN" variant, Rastegari et
  al. 2016; ``--scale layer`` for one per layer, ``--scale none`` for the paper's plain
  +-1, which the BatchNorm after each convolution rescales). The first convolution and
  the classifier stay in float, as is customary. Fine-tuning from the pretrained weights
  goes through :func:`edgekit.compress.driver.compress_model` (BatchNorm statistics
  re-estimated, :func:`edgekit.train.fit` with logits KD from the float model, statistics
  re-estimated again). Top-1 on all 10,000 test images: float, binarized with no
  training, and after the fine-tune; the wall time and the load average are recorded.

  Then the deployment question: the binarized model is saved as an edgekit checkpoint,
  exported to ONNX (dense float weights that happen to be +-alpha) beside the float
  model, built for every CPU target available here (``ort-cpu``, ``ort-cpu-int8``,
  ``ov-cpu``, ``ov-cpu-int8``) and benchmarked with :func:`edgekit.api.benchmark` in one
  interleaved run (batch 1, 1 thread): p50 latency and its ratio to the float model per
  round (median, min-max), top-1 per target, the artifact size raw and zipped, and the
  size the weights would take packed at 1 bit.

OpenVINO's BinaryConvolution (opset1, XNOR-popcount) on this CPU::

    .venv/bin/python benchmarks/binaryconnect.py probe --out runs/binaryconnect

  Whether the installed OpenVINO still compiles the op for the CPU, its latency against
  a float convolution of the same shape at ResNet-20's three stage shapes (1 thread),
  and whether it computes a weights-only binary convolution: it binarizes its input too,
  so it computes XNOR-Net's fully binary layer, not BinaryConnect's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CPU_TARGETS = ("ort-cpu", "ort-cpu-int8", "ov-cpu", "ov-cpu-int8")


# --- the binarization ------------------------------------------------------------------


def _sign_ste_module():
    import torch
    from torch import nn

    class SignSTE(nn.Module):
        """Parametrization ``w -> alpha * sign(w)`` with the straight-through estimator.

        Forward: ``alpha * b`` with ``b = +1 where w >= 0 else -1``. Backward: the
        gradient of ``alpha * clamp(w, -1, 1)`` (identity inside [-1, 1], zero outside),
        and through ``alpha`` when it is computed from ``w``.
        """

        def __init__(self, scale: str):
            super().__init__()
            self.scale = scale

        def forward(self, w):
            b = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
            s = w.clamp(-1.0, 1.0)
            s = s + (b - s).detach()
            if self.scale == "none":
                return s
            dims = tuple(range(1, w.dim())) if self.scale == "channel" else tuple(range(w.dim()))
            return w.abs().mean(dim=dims, keepdim=True) * s

    return SignSTE


class BinaryConnect:
    """The :class:`edgekit.compress.base.Technique` protocol for BinaryConnect (script-local:
    declined for deployment, so it is not in :data:`edgekit.compress.TECHNIQUES`)."""

    name = "binaryconnect"
    level_doc = "1.0: every convolution but the first binarized"

    def __init__(self):
        self._hooks = []

    def check(self, level, options):
        from edgekit.errors import EdgekitError

        if level != 1.0:
            raise EdgekitError(f"binaryconnect: level must be 1.0, got {level}")
        if options.get("scale", "channel") not in ("channel", "layer", "none"):
            raise EdgekitError("binaryconnect: scale must be channel, layer or none")

    def apply(self, model, example, level, options, log):
        import torch
        import torch.nn.utils.parametrize as P
        from torch import nn

        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        first = convs[0][0]
        sign = _sign_ste_module()
        done = []
        for n, m in convs[1:]:
            with torch.no_grad():
                m.weight.clamp_(-1.0, 1.0)
            P.register_parametrization(m, "weight", sign(options.get("scale", "channel")))
            done.append((n, m))

        def clip(_mod, _inp):  # BinaryConnect's clipping of the real-valued weights
            with torch.no_grad():
                for _, m in done:
                    m.parametrizations.weight.original.clamp_(-1.0, 1.0)

        self._hooks.append(model.register_forward_pre_hook(clip))
        log(f"  binarized {len(done)} convolutions; kept float: {first} and the classifier")
        return {
            "binarized": [n for n, _ in done],
            "kept_float": [first]
            + [n for n, m in model.named_modules() if isinstance(m, nn.Linear)],
            "scale": options.get("scale", "channel"),
        }

    def finalize(self, model):
        import torch.nn.utils.parametrize as P

        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        n_bin, distinct = 0, 0
        for m in model.modules():
            if P.is_parametrized(m, "weight"):
                P.remove_parametrizations(m, "weight", leave_parametrized=True)
                w = m.weight.detach().reshape(m.weight.shape[0], -1)
                n_bin += w.numel()
                distinct = max(distinct, max(len(np.unique(r.abs().numpy())) for r in w))
        return {"binary_weights": n_bin, "max_distinct_abs_per_channel": distinct}


def register_binaryconnect():
    """Put ``binaryconnect`` in the registry for this process only."""
    from edgekit.compress import register

    mod = types.ModuleType("edgekit_bench_binaryconnect")
    mod.TECHNIQUE = BinaryConnect()
    sys.modules[mod.__name__] = mod
    register("binaryconnect", mod.__name__)


# --- sizes ------------------------------------------------------------------------------


def zipped_bytes(artifact_dir: Path) -> int:
    """Bytes of an artifact's files (all but manifest.json: OpenVINO's .xml and .bin) in a
    deflate zip at level 9 (what ``zip -9`` gives)."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for p in sorted(artifact_dir.rglob("*")):
            if p.is_file() and p.name != "manifest.json":
                z.write(p, p.relative_to(artifact_dir).as_posix())
    return len(buf.getvalue())


def packed_bytes(model, binarized: list[str]) -> dict:
    """Bytes the weights take with the binarized convolutions packed at 1 bit per weight
    plus one float32 scale per output channel; every other tensor float32."""
    binset = {f"{n}.weight" for n in binarized}
    bits = 0
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            continue
        bits += v.numel() + 32 * v.shape[0] if k in binset else 32 * v.numel()
    fp32 = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    return {"packed_bytes": bits // 8, "float32_bytes": fp32}


# --- train ------------------------------------------------------------------------------


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cmd_train(a) -> dict:
    import torch

    from edgekit.compress.driver import compress_model
    from edgekit.data import load_dataset
    from edgekit.models import load_model, model_normalization, save_checkpoint
    from edgekit.preprocess import resolve_preprocess
    from edgekit.prune import finetune_config
    from edgekit.train import evaluate

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    register_binaryconnect()
    ds = load_dataset(f"npz:{a.data}")
    model, meta = load_model("resnet20", a.weights, 10)
    pre = resolve_preprocess(ds, model_normalization("resnet20"), None, meta)
    train = ds.split("train")
    if a.train_subset:
        from edgekit.data import balanced_indices

        train = train.subset(balanced_indices(train.y, max(1, a.train_subset // 10), seed=0))
    res: dict = {"threads": a.threads, "scale": a.scale, "train_images": len(train)}
    res["load_start"] = loadavg()
    t0 = time.time()
    res["float_top1"] = evaluate(model, ds.test, pre)
    print(f"float top-1 {res['float_top1']:.2f}%", flush=True)
    m0 = copy.deepcopy(model)
    compress_model(m0, "binaryconnect", 1.0, train, pre, options={"scale": a.scale}, log=print)
    res["binarized_no_training_top1"] = evaluate(m0, ds.test, pre)
    print(f"binarized, BN re-estimated, no training: {res['binarized_no_training_top1']:.2f}%")
    tcfg = finetune_config(None, a.epochs, None, a.lr, batch_size=a.batch)
    t1 = time.time()
    record, hist = compress_model(
        model,
        "binaryconnect",
        1.0,
        train,
        pre,
        options={"scale": a.scale},
        train_cfg=tcfg,
        hflip=ds.hflip,
        distill=not a.no_distill,
        log=print,
    )
    res["train_wall_s"] = round(time.time() - t1, 1)
    res["top1"] = evaluate(model, ds.test, pre)
    res["load_end"] = loadavg()
    res["total_wall_s"] = round(time.time() - t0, 1)
    res["epochs"] = a.epochs
    res["finetune_config"] = tcfg.to_dict()
    res["history"] = hist
    res["record"] = record
    res["sizes"] = packed_bytes(model, record["binarized"])
    print(f"BinaryConnect after {a.epochs} epochs: {res['top1']:.2f}% ({res['train_wall_s']} s)")
    ckpt = out / "binaryconnect-resnet20.pt"
    save_checkpoint(
        ckpt,
        model,
        "resnet20",
        10,
        force=True,
        classes=list(ds.classes),
        preprocess=pre.to_dict(),
        dataset=ds.name,
        history=hist,
        compression={**record, "test_top1": res["top1"]},
    )
    res["checkpoint"] = str(ckpt)
    (out / "train.json").write_text(json.dumps(res, indent=1))
    return res


# --- deploy: the binarized model on every CPU target ------------------------------------


def _ratio(rows_p50: list, base_p50: list) -> dict | None:
    r = [a / b for a, b in zip(rows_p50 or [], base_p50 or [], strict=False) if a and b]
    if not r:
        return None
    return {"median": float(np.median(r)), "min": min(r), "max": max(r), "rounds": len(r)}


def cmd_deploy(a) -> dict:
    import edgekit
    from edgekit.targets import load_targets, unavailable_reason

    out = Path(a.out)
    ckpt = out / "binaryconnect-resnet20.pt"
    if not ckpt.is_file():
        sys.exit(f"error: {ckpt} not found; run the train step first")
    dataset = f"npz:{a.data}"
    known = load_targets(None)
    targets = [t for t in CPU_TARGETS if t in known and not unavailable_reason(known[t])]
    skipped = {
        t: unavailable_reason(known[t]) for t in CPU_TARGETS if t in known and t not in targets
    }
    dirs, labels = [], []
    for tag, weights in (("float", a.weights), ("binary", str(ckpt))):
        w = out / f"work-{tag}"
        edgekit.export("resnet20", dataset, weights=weights, work_dir=w, force=True)
        built = edgekit.build(w, targets, force=True)
        for art in built.artifacts:
            if art.status == "ok":
                dirs.append(art.path)
                labels.append((tag, art.target))
            else:
                skipped[f"{tag}/{art.target}"] = art.reason
    res = edgekit.benchmark(
        out / "work-float", artifacts=dirs, dataset=dataset, threads=1, rounds=a.rounds
    )
    rows = {lab: r for lab, r in zip(labels, res.rows, strict=True)}
    table = []
    for t in targets:
        f, b = rows.get(("float", t)), rows.get(("binary", t))
        if not f or not b:
            continue
        fa = Path(f"{out}/work-float/artifacts/{t}")
        ba = Path(f"{out}/work-binary/artifacts/{t}")
        fm = json.loads((fa / "manifest.json").read_text())
        bm = json.loads((ba / "manifest.json").read_text())
        table.append(
            {
                "target": t,
                "float_top1": f["top1"],
                "binary_top1": b["top1"],
                "float_p50_ms": f["latency_ms"]["p50"] if f["latency_ms"] else None,
                "binary_p50_ms": b["latency_ms"]["p50"] if b["latency_ms"] else None,
                "binary_over_float": _ratio(
                    (b["latency_ms"] or {}).get("rounds_p50"),
                    (f["latency_ms"] or {}).get("rounds_p50"),
                ),
                "float_bytes": fm["size_bytes"],
                "binary_bytes": bm["size_bytes"],
                "float_zip_bytes": zipped_bytes(fa),
                "binary_zip_bytes": zipped_bytes(ba),
                "status": (f["status"], b["status"]),
            }
        )
    rep = {"targets": table, "skipped": skipped, "environment": res.environment}
    (out / "deploy.json").write_text(json.dumps(rep, indent=1, default=str))
    lines = [
        "| target | top-1 float / binary | p50 ms float / binary | binary / float (median, "
        "min-max) | size MB float / binary | zip MB float / binary |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        q = r["binary_over_float"] or {}
        lines.append(
            f"| {r['target']} | {r['float_top1']:.2f} / {r['binary_top1']:.2f} | "
            f"{r['float_p50_ms']:.3f} / {r['binary_p50_ms']:.3f} | "
            f"{q.get('median', float('nan')):.2f} ({q.get('min', float('nan')):.2f}-"
            f"{q.get('max', float('nan')):.2f}) | {r['float_bytes'] / 1e6:.3f} / "
            f"{r['binary_bytes'] / 1e6:.3f} | {r['float_zip_bytes'] / 1e6:.3f} / "
            f"{r['binary_zip_bytes'] / 1e6:.3f} |"
        )
    (out / "deploy.md").write_text("\n".join(lines) + "\n")
    return rep


# --- OpenVINO's BinaryConvolution --------------------------------------------------------


def cmd_probe(a) -> dict:
    """Compile OpenVINO's opset1 BinaryConvolution on the CPU, time it against a float
    convolution, and test what it computes (see the module docstring)."""
    import openvino as ov
    import openvino.opset1 as o1
    import openvino.opset13 as o13

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    rng = np.random.default_rng(0)
    out: dict = {"openvino": ov.__version__, "shapes": []}

    def timed(cm, x, n):
        r = cm.create_infer_request()
        for _ in range(50):
            r.infer({0: x})
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            r.infer({0: x})
            ts.append(time.perf_counter() - t)
        return float(np.median(ts) * 1e3), r.get_output_tensor(0).data.copy()

    for c, hw in ((16, 32), (32, 16), (64, 8)):
        bits = rng.integers(0, 2, (c, c, 3, 3)).astype(np.uint8)
        wf = np.where(bits == 1, 1.0, -1.0).astype(np.float32)
        x = o13.parameter([1, c, hw, hw], np.float32, name="x")
        fconv = o13.convolution(x, o13.constant(wf), [1, 1], [1, 1], [1, 1], [1, 1])
        packed = np.packbits(bits.reshape(-1), bitorder="little")
        wt = ov.Tensor(ov.Type.u1, ov.Shape([c, c, 3, 3]))
        np.copyto(wt.data.reshape(-1), packed.view(wt.data.dtype).reshape(-1)[: wt.data.size])
        bconv = o1.binary_convolution(
            x, o13.constant(wt), [1, 1], [1, 1], [1, 1], [1, 1], "xnor-popcount", -1.0
        )
        xin = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        rec = {"channels": c, "hw": hw}
        try:
            cf = core.compile_model(ov.Model([fconv], [x]), "CPU", cfg)
            cb = core.compile_model(ov.Model([bconv], [x]), "CPU", cfg)
            rounds_f, rounds_b = [], []
            for _ in range(a.rounds):  # interleaved
                tf, yf = timed(cf, xin, 500)
                tb, yb = timed(cb, xin, 500)
                rounds_f.append(tf)
                rounds_b.append(tb)
            ratio = [b / f for b, f in zip(rounds_b, rounds_f, strict=True)]
            # what it computes: the float conv of sign(x) with the +-1 weights? (interior
            # pixels: the op pads with pad_value = -1, the float reference with 0)
            _, ysign = timed(cf, np.where(xin > 0, 1.0, -1.0).astype(np.float32), 1)
            inner = (..., slice(1, -1), slice(1, -1))
            rec.update(
                compiled=True,
                float_p50_ms=float(np.median(rounds_f)),
                binary_p50_ms=float(np.median(rounds_b)),
                binary_over_float={
                    "median": float(np.median(ratio)),
                    "min": min(ratio),
                    "max": max(ratio),
                },
                interior_max_abs_diff_vs_float_input=float(np.abs(yb - yf)[inner].max()),
                interior_max_abs_diff_vs_binarized_input=float(np.abs(yb - ysign)[inner].max()),
            )
        except Exception as e:  # the op's CPU support is what is being tested
            rec.update(compiled=False, error=str(e).splitlines()[0])
        print(rec, flush=True)
        out["shapes"].append(rec)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "probe.json").write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("step", choices=["train", "deploy", "probe", "all"])
    ap.add_argument("--data", default=str(SHARED / "data" / "cifar10"))
    ap.add_argument("--weights", default=str(SHARED / "models" / "resnet20-12fca82f.th"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--scale", choices=["channel", "layer", "none"], default="channel")
    ap.add_argument("--train-subset", type=int, default=None, help="class-balanced images")
    ap.add_argument("--no-distill", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="runs/binaryconnect")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    if a.step in ("train", "all"):
        cmd_train(a)
    if a.step in ("deploy", "all"):
        print(json.dumps(cmd_deploy(a)["targets"], indent=1, default=str))
    if a.step in ("probe", "all"):
        cmd_probe(a)


if __name__ == "__main__":
    main()
