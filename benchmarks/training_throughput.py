"""Training throughput (images/s) of edgekit's own training loop, per device and model.

It runs :func:`edgekit.train.fit` itself (the device-resident loader, batched crop +
flip, and on CUDA channels_last + bfloat16 autocast, optionally ``torch.compile``) on
CIFAR-10 training images (the real ones from ../shared when present, random ones
otherwise): one warm-up epoch of ``--steps`` batches (cuDNN autotuning, compilation),
then ``--repeats`` timed epochs of ``--steps`` batches each. Reported per model: the
median images/s over the timed epochs, with their min-max.

GPU utilization is sampled every ``--sample-s`` seconds during the timed epochs by a
thread, through NVML (``pynvml``, from the ``nvidia-ml-py`` package) when importable,
else ``nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits``; its mean
and the number of samples are reported. Without a GPU, the CPU figures are reported
and GPU utilization is n/a.

    uv run --no-sync python benchmarks/training_throughput.py --models resnet20 --device cpu
    python benchmarks/training_throughput.py --models resnet18 --device cuda --steps 100

The bar of issue 12 (H100 class): ResNet-18 at >= 20,000 images/s with a mean GPU
utilization >= 60%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import threading
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class GpuSampler:
    """Samples one GPU's utilization (percent) in a background thread."""

    def __init__(self, index: int, period_s: float):
        self.index, self.period = index, period_s
        self.samples: list[float] = []
        self.source = "n/a"
        self._stop = threading.Event()
        self._read = self._backend()
        self._thread = None

    def _backend(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "NVML"
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            cmd = [
                "nvidia-smi",
                f"--id={self.index}",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
            ]
            return lambda: float(subprocess.run(cmd, capture_output=True, text=True).stdout)
        return None

    def start(self):
        if self._read is None:
            return
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a failed read is a missing sample
                self.samples.append(self._read())
            self._stop.wait(self.period)

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join()


def training_images(n: int):
    from edgekit.data import Split

    path = SHARED / "data" / "cifar10" / "cifar10-train.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return Split(z["x"][:n], z["y"][:n]), "real CIFAR-10 training images"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return Split(x, rng.integers(0, 10, n)), "random images (CIFAR-10 not found)"


def measure(model_name: str, device, a) -> dict:
    from edgekit.models import build_model
    from edgekit.preprocess import Preprocess
    from edgekit.train import fit, make_config

    split, src = training_images(a.steps * a.batch_size)
    pre = Preprocess(32, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    cfg = make_config(a.recipe, epochs=1 + a.repeats, batch_size=a.batch_size, compile=a.compile)
    torch.manual_seed(0)
    model = build_model(model_name, 10)
    sampler = GpuSampler(device.index or 0, a.sample_s) if device.type == "cuda" else None

    def progress(epoch, entry):
        if epoch == 0 and sampler:  # after the warm-up epoch
            sampler.start()

    hist = fit(model, split, pre, cfg, progress=progress, device=device, log=print)
    if sampler:
        sampler.stop()
    ips = [h["images_per_s"] for h in hist[1:]]
    util = statistics.mean(sampler.samples) if sampler and sampler.samples else None
    return {
        "model": model_name,
        "device": hist[0]["device"],
        "data": src,
        "batch_size": a.batch_size,
        "steps_per_epoch": a.steps,
        "timed_epochs": a.repeats,
        "images_per_s": ips,
        "median": statistics.median(ips),
        "min": min(ips),
        "max": max(ips),
        "gpu_util_mean": util,
        "gpu_util_samples": len(sampler.samples) if sampler else 0,
        "gpu_util_source": sampler.source if sampler else "n/a (no GPU)",
    }


def main() -> None:
    from edgekit.device import device_name, resolve_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20", help="comma-separated: resnet8,resnet20,...")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="batches per timed epoch")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs")
    ap.add_argument("--recipe", default="cifar-fast")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--sample-s", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    print(
        f"device {device_name(device)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU thread(s), batch {a.batch_size}, recipe {a.recipe}, "
        f"compile {a.compile}; 1 warm-up + {a.repeats} timed epochs of {a.steps} steps"
    )
    rows = [measure(m.strip(), device, a) for m in a.models.split(",") if m.strip()]
    print()
    print("| model | device | images/s (median) | min-max | mean GPU util | samples (source) |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        util = "n/a" if r["gpu_util_mean"] is None else f"{r['gpu_util_mean']:.0f}%"
        print(
            f"| {r['model']} | {r['device']} | {r['median']:,.0f} | "
            f"{r['min']:,.0f}-{r['max']:,.0f} | {util} | "
            + (
                f"{r['gpu_util_samples']} ({r['gpu_util_source']}) |"
                if r["gpu_util_samples"]
                else f"{r['gpu_util_source']} |"
            )
        )
    print(f"\ndata: {rows[0]['data']}" if rows else "")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
