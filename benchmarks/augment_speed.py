"""Batched crop + flip (edgekit.augment) against the per-image loop it replaced.

A 256-image batch of 32x32 RGB uint8 images (real CIFAR-10 test images when
../shared is present, random ones otherwise), NCHW, padding 4, horizontal flip on.
The two are timed in interleaved repetitions (loop, batched, loop, batched, ...), each
repetition the mean of ``--inner`` calls, so that machine load hits both alike; the
speed-up is the median of the per-repetition ratios, with their min-max.

    uv run --no-sync python benchmarks/augment_speed.py [--threads 1] [--device cpu]

The bar (issue 12): the batched op is >= 10x faster than the loop on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.augment import random_crop_flip

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def loop_augment(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator):
    """edgekit.train.augment before issue 12, verbatim: one slice per image in Python."""
    n, _, h, w = x.shape
    if padding:
        xp = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        x = torch.stack([xp[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def batch(n: int) -> tuple[torch.Tensor, str]:
    path = SHARED / "data" / "cifar10" / "cifar10-test.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            x = z["x"][:n]
        src = "real CIFAR-10 test images"
    else:
        x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        src = "random images (CIFAR-10 not found)"
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), src


def timed(fn, inner: int) -> float:
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / inner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the loop always on CPU)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    x, src = batch(a.batch)
    xd = x.to(a.device)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    # the same seeded draws give the same crops: the two are the same augmentation
    assert torch.equal(loop_augment(x, 4, True, g1), random_crop_flip(x, 4, True, g2))

    def loop():
        return loop_augment(x, 4, True, g1)

    def batched():
        return random_crop_flip(xd, 4, True, g2)

    for _ in range(3):  # warm-up
        loop(), batched()
    t_loop, t_batched, ratios = [], [], []
    for _ in range(a.reps):
        tl = timed(loop, a.inner)
        tb = timed(batched, a.inner)
        t_loop.append(tl)
        t_batched.append(tb)
        ratios.append(tl / tb)
    med = statistics.median
    print(
        f"batch {a.batch}x3x32x32 uint8 ({src}), padding 4 + hflip, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {a.device}; "
        f"{a.reps} interleaved repetitions of {a.inner} calls"
    )
    print(
        f"per-image loop : median {med(t_loop) * 1e3:.3f} ms "
        f"(min {min(t_loop) * 1e3:.3f}, max {max(t_loop) * 1e3:.3f})"
    )
    print(
        f"batched gather : median {med(t_batched) * 1e3:.3f} ms "
        f"(min {min(t_batched) * 1e3:.3f}, max {max(t_batched) * 1e3:.3f})"
    )
    print(
        f"speed-up       : median {med(ratios):.1f}x (min {min(ratios):.1f}x, "
        f"max {max(ratios):.1f}x); bar >= 10x: {'met' if med(ratios) >= 10 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
