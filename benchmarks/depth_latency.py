"""Would dropping whole residual blocks meet a latency budget that channel pruning cannot?

``edgekit search`` on ``ort-cpu-int8`` (benchmarks/search.py) could not bring the shared
ResNet-20 under 0.8x its unpruned p50: the fastest per-stage channel pruning reached 0.849x,
because a 0.2-ms INT8 ResNet-20 is bound by its operator count, not its MACs. This script
measures the other axis, depth: each variant replaces the last k residual blocks of every
stage (blocks with an identity shortcut, so the stage's shapes are kept) by an identity,
as in stochastic depth (Huang et al., ECCV 2016) and Veit et al., NeurIPS 2016 ("Residual
networks behave like ensembles of relatively shallow networks"), who dropped blocks of a
trained ResNet at test time.

For each variant: the FP32 top-1 *without fine-tuning* on the first ``--images`` test
images (PyTorch), MACs, and the p50 of the ONNX in ONNX Runtime FP32 and INT8 (QDQ,
per-channel 7-bit weights, U8S8, MinMax on random calibration data: latency only, as
``ort-cpu-int8``'s defaults, with its input-channel pad), 1 thread, batch 1, timed in
``--rounds`` interleaved rounds; the ratio to the full model is per round (median, min-max).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/depth_latency.py [--rounds 9]

Writes ``benchmarks/results/depth_latency.json``. This measurement came before the
``depth`` technique (``edgekit drop-blocks``, :mod:`edgekit.compress.depth`), which the
script now uses (the same blocks); ``edgekit search --depth`` searches the same axis.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
R20 = SHARED / "models" / "resnet20-12fca82f.th"
CIFAR = SHARED / "data" / "cifar10"


def plans(model) -> dict[str, list[str]]:
    """name -> the blocks dropped: the last k droppable blocks of every stage
    (:func:`edgekit.compress.depth.droppable_blocks`; k = 0 is the full model)."""
    import torch

    from edgekit.compress.depth import droppable_blocks, last_blocks

    groups = droppable_blocks(model, torch.zeros(1, 3, 32, 32))
    return {
        "full" if k == 0 else f"drop {k} per stage": last_blocks(groups, dict.fromkeys(groups, k))
        for k in range(min(len(g) for g in groups.values()) + 1)
    }


def dropped(model, blocks: list[str]):
    """A copy of ``model`` with ``blocks`` replaced by nn.Identity."""
    import torch

    from edgekit.structure import set_module

    m = copy.deepcopy(model)
    for b in blocks:
        set_module(m, b, torch.nn.Identity())
    return m


def int8_onnx(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgekit.channel_pad import pad_input_channels

    class Random(CalibrationDataReader):
        def __init__(self):
            self.i, self.rng = 0, np.random.default_rng(0)

        def get_next(self):
            self.i += 1
            if self.i > 4:
                return None
            return {"input": self.rng.normal(size=(8, 3, 32, 32)).astype(np.float32)}

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(
        str(pre), str(out), Random(), quant_format=QuantFormat.QDQ, per_channel=True,
        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    pad_input_channels(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=400, help="Inferences per round and model.")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/depth_latency.json")
    ap.add_argument(
        "--finetune-epochs", type=int, default=1,
        help="KD fine-tuning of each dropped variant (0: none), as benchmarks/techniques.py.",
    )  # fmt: skip
    ap.add_argument("--train-subset", type=int, default=10000)
    a = ap.parse_args()
    if not R20.is_file() or not (CIFAR / "cifar10-test.npz").is_file():
        print(f"error: {R20} or {CIFAR} is missing (the shared files)", file=sys.stderr)
        return 2
    import onnxruntime as ort
    import torch

    from edgekit.harness import environment
    from edgekit.models import load_model
    from edgekit.preprocess import Preprocess
    from edgekit.prune import model_stats

    torch.set_num_threads(1)
    model, _ = load_model("resnet20", R20, 10)
    test = np.load(CIFAR / "cifar10-test.npz")
    pre = Preprocess()  # ImageNet mean/std: the shared ResNet-20's (its README)
    x, y = pre.apply(test["x"][: a.images]), test["y"][: a.images]
    example = torch.zeros(1, 3, 32, 32)
    rows, sessions = {}, {}
    td = Path(tempfile.mkdtemp(prefix="edgekit-depth-"))
    plan = plans(model)
    for name, blocks in plan.items():
        m = dropped(model, blocks)
        with torch.no_grad():
            top1 = float((m(torch.from_numpy(x)).argmax(1).numpy() == y).mean() * 100)
        p = td / (name.replace(" ", "_") + ".onnx")
        torch.onnx.export(
            m, example, str(p), input_names=["input"], output_names=["logits"],
            opset_version=17, dynamo=False, dynamic_axes={"input": {0: "n"}},
        )  # fmt: skip
        q = int8_onnx(p, p.with_suffix(".int8.onnx"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        for kind, path in (("fp32", p), ("int8", q)):
            sessions[(name, kind)] = ort.InferenceSession(
                str(path), so, providers=["CPUExecutionProvider"]
            )
        rows[name] = {
            "top1_no_finetune": round(top1, 2),
            "macs_m": round(model_stats(m, example)["macs"] / 1e6, 2),
        }
    if a.finetune_epochs > 0:  # top-1 after KD fine-tuning, on the full test set
        from edgekit.compress.driver import compress_model
        from edgekit.data import balanced_indices, load_dataset
        from edgekit.prune import finetune_config

        ds = load_dataset(f"npz:{CIFAR}")
        train = ds.split("train")
        train = train.subset(balanced_indices(train.y, a.train_subset // 10))
        xt = pre.apply(test["x"])
        for name, blocks in plan.items():
            if not blocks:
                continue
            m = copy.deepcopy(model)
            t0 = time.time()
            tcfg = finetune_config(None, a.finetune_epochs, None, None)
            compress_model(
                m, "depth", None, train, pre, options={"blocks": blocks},
                train_cfg=tcfg, distill=True,
            )  # fmt: skip
            with torch.no_grad():
                pred = np.concatenate(
                    [
                        m(torch.from_numpy(xt[i : i + 500])).argmax(1).numpy()
                        for i in range(0, len(xt), 500)
                    ]
                )
            rows[name]["top1_finetuned"] = round(float((pred == test["y"]).mean() * 100), 2)
            rows[name]["finetune"] = {
                "epochs": a.finetune_epochs, "train_images": len(train.y), "kd": True,
                "seconds": round(time.time() - t0, 1), "test_images": int(len(xt)),
            }  # fmt: skip
            print(f"{name}: fine-tuned top-1 {rows[name]['top1_finetuned']:.2f}%", flush=True)
    xi = x[:1]
    p50 = {k: [] for k in sessions}
    for _ in range(a.rounds):
        for k, s in sessions.items():
            t = []
            for _ in range(a.runs):
                t0 = time.perf_counter()
                s.run(None, {"input": xi})
                t.append(time.perf_counter() - t0)
            p50[k].append(float(np.median(t)) * 1e3)
    for name in rows:
        for kind in ("fp32", "int8"):
            r = [v / f for v, f in zip(p50[(name, kind)], p50[("full", kind)], strict=True)]
            rows[name][kind] = {
                "p50_ms": round(statistics.median(p50[(name, kind)]), 4),
                "ratio": round(statistics.median(r), 3),
                "ratio_min": round(min(r), 3),
                "ratio_max": round(max(r), 3),
            }
    res = {
        "environment": environment(1),
        "model": "shared ResNet-20 (91.73%)",
        "test_images": a.images,
        "rounds": a.rounds,
        "variants": rows,
    }
    a.out.write_text(json.dumps(res, indent=2))
    for name, r in rows.items():
        print(
            f"{name:20s} top-1 {r['top1_no_finetune']:6.2f}% "
            f"(fine-tuned {r.get('top1_finetuned', '-')})  MACs {r['macs_m']:6.2f}M  "
            f"ort-cpu {r['fp32']['ratio']:.3f}x  ort-cpu-int8 {r['int8']['ratio']:.3f}x "
            f"({r['int8']['ratio_min']:.3f}-{r['int8']['ratio_max']:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
