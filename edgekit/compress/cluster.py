"""Weight clustering (weight sharing): each layer's weights take one of 2^b values.

Technique ``cluster`` (level = bits b, an integer 1 <= b <= 8). Per ``nn.Conv2d``/
``nn.Linear`` layer, the weights are clustered into 2^b centroids by K-means (Lloyd's
algorithm in one dimension; centroids initialised linearly between the layer's minimum
and maximum weight, the initialisation Han et al. found best), and each weight is
replaced by its centroid. Fine-tuning then trains the CENTROIDS only: the weight is the
parametrization ``weight = centroids[index]`` (``torch.nn.utils.parametrize``), so the
gradients of the weights in a cluster are accumulated into its centroid (averaged over
the cluster, see :class:`SharedWeights`). Han, Mao and Dally
2016, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained
Quantization and Huffman Coding" (ICLR), section 3.

:meth:`Cluster.finalize` leaves plain float32 weights with at most 2^b distinct values
per layer: the dense backends run them as dense weights (same latency). The saving is
in storage: the record's codebook size counts b bits per weight index plus the float32
centroids, per layer and in total (Han et al.'s storage without Huffman coding); the
zipped artifact (``zip_mb`` of a report row) shows what a generic compressor gets.

Options (``options`` dict): ``layers`` (module names; default every Conv2d/Linear),
``ignore`` (module names left as they are), ``iters`` (K-means iterations, default 30).
"""

from __future__ import annotations

import math

import torch
import torch.nn.utils.parametrize as P
from torch import nn

from edgekit.compress.sparsity import _check_options, _choose, weight_layers
from edgekit.errors import EdgekitError

MIN_BITS, MAX_BITS = 1, 8


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's K-means of scalar ``values`` into ``k`` clusters, linear initialisation.

    In one dimension the nearest centroid is found by binary search among the
    midpoints of the sorted centroids (``torch.bucketize``), O(N log k) per iteration.
    A cluster that empties keeps its centroid. Stops early when no assignment changes.

    Args:
        values: float tensor, any shape (flattened).
        k: number of centroids (>= 1).

    Returns:
        ``(centroids float32 [k] sorted ascending, index int64 of values' shape)``.
    """
    v = values.detach().reshape(-1).float()
    lo, hi = float(v.min()), float(v.max())
    c = torch.linspace(lo, hi, k) if k > 1 else v.mean().reshape(1)
    idx = None
    for _ in range(max(1, iters)):
        c, _ = torch.sort(c)
        new = torch.bucketize(v, (c[1:] + c[:-1]) / 2) if k > 1 else torch.zeros_like(v).long()
        if idx is not None and torch.equal(new, idx):
            break
        idx = new
        sums = torch.zeros(k).index_add_(0, idx, v)
        counts = torch.bincount(idx, minlength=k).float()
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    return c, idx.reshape(values.shape)


class SharedWeights(nn.Module):
    """The parametrization ``weight = centroids[index]`` (``centroids`` trainable,
    ``index`` a fixed int64 buffer of the weight's shape).

    The value is exactly ``centroids[index]``. The gradient reaching centroid k is the
    gradient of the weights in cluster k summed (Han et al. 2016, eq. 3) and divided by
    the cluster's size: the mean, so that a centroid moves as far as one of its weights
    would at the same learning rate. With the plain sum, a cluster of ~9,000 weights
    takes a step ~9,000 times too large at a fine-tuning lr of 0.01: on ResNet-20 at 2
    bits, 2 epochs took top-1 from 69.6% down to 12.4% (benchmarks/sparsity.py).
    """

    def __init__(self, centroids: torch.Tensor, index: torch.Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids.clone())
        self.register_buffer("index", index.clone())
        count = torch.bincount(index.reshape(-1), minlength=centroids.numel()).clamp(min=1)
        self.register_buffer("inv_size", (1.0 / count.float())[index])  # per weight
        self.register_buffer("initial", centroids.clone())  # to report how far they moved

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        w = self.centroids[self.index]
        # value w; gradient to each centroid: the mean of its weights' gradients
        w = w.detach() + (w - w.detach()) * self.inv_size
        return w.to(original.dtype)


def codebook_bytes(n_weights: int, bits: int, centroids: int) -> dict:
    """Storage of a clustered layer: ``ceil(n * bits / 8)`` bytes of indices plus
    ``centroids`` float32 values; and the float32 dense size, for the ratio."""
    idx = math.ceil(n_weights * bits / 8)
    cen = 4 * centroids
    return {
        "index_bytes": idx,
        "centroid_bytes": cen,
        "bytes": idx + cen,
        "dense_bytes": 4 * n_weights,
    }


class Cluster:
    """Technique ``cluster``: K-means weight sharing with trained centroids."""

    name = "cluster"
    level_doc = "bits b per weight index: 2^b shared values per layer, 1 <= b <= 8"

    def check(self, level: float, options: dict) -> None:
        if not (MIN_BITS <= level <= MAX_BITS and float(level).is_integer()):  # NaN too
            raise EdgekitError(
                f"bits {level} is not a whole number from {MIN_BITS} to {MAX_BITS}",
                "e.g. --bits 4 (16 shared values per layer)",
            )
        it = options.get("iters", 30)
        if not isinstance(it, int) or isinstance(it, bool) or not 1 <= it <= 10_000:
            raise EdgekitError(f"iters must be a whole number from 1 to 10000, got {it!r}")
        _check_options(options)

    def apply(self, model, example, level, options, log) -> dict:
        bits = int(level)
        k = 2**bits
        layers = _choose(model, options)
        for _, m in layers:
            c, idx = kmeans_1d(m.weight, k, options.get("iters", 30))
            P.register_parametrization(m, "weight", SharedWeights(c, idx))
            # the original weight is not trained (no gradient reaches it): only the centroids
            m.parametrizations.weight.original.requires_grad_(False)
        log(f"  cluster: {len(layers)} layers clustered to {k} shared values each ({bits} bits)")
        return {"bits": bits, "centroids": k, "layers_clustered": [n for n, _ in layers]}

    def finalize(self, model) -> dict:
        bits = None
        rows = []
        moved = 0.0
        for n, m in weight_layers(model):
            if not P.is_parametrized(m, "weight"):
                continue
            p = m.parametrizations.weight[0]
            if not isinstance(p, SharedWeights):
                continue
            k = p.centroids.numel()
            bits = round(math.log2(k))
            moved = max(moved, float((p.centroids.detach() - p.initial).abs().max()))
            P.remove_parametrizations(m, "weight", leave_parametrized=True)
            m.weight.requires_grad_(True)
            w = m.weight.detach()
            rows.append(
                {
                    "layer": n,
                    "weights": w.numel(),
                    "distinct": int(torch.unique(w).numel()),
                    **codebook_bytes(w.numel(), bits, k),
                }
            )
        total = {
            key: sum(r[key] for r in rows)
            for key in ("index_bytes", "centroid_bytes", "bytes", "dense_bytes")
        }
        return {
            "codebook": {
                "bits": bits,
                "layers": rows,
                **total,
                "ratio": total["bytes"] / total["dense_bytes"] if total["dense_bytes"] else None,
            },
            "max_distinct": max((r["distinct"] for r in rows), default=0),
            "centroid_max_shift": moved,
        }


TECHNIQUE = Cluster()
