"""Low-rank factorization of convolutions by truncated SVD (technique ``lowrank``).

A k x k convolution with weight W [N, C, k, k] (groups 1) is reshaped to the matrix
W' [N, C*k*k] and replaced by its rank-r truncated SVD W' ~ U_r S_r V_r^T, deployed as two
ordinary convolutions (:class:`edgekit.layers.LowRankConv2d`):

- ``reduce``: a k x k conv with r filters, weight ``sqrt(S_r) V_r^T`` reshaped to
  [r, C, k, k] (same stride, padding and dilation as the original, no bias);
- ``expand``: a 1 x 1 conv with weight ``U_r sqrt(S_r)`` [N, r, 1, 1], which takes the
  original bias.

This is the two-layer decomposition of Zhang et al. 2015, "Accelerating Very Deep
Convolutional Networks for Classification and Detection" (TPAMI 38(10)), solved by
default with their linear data-driven solution (``method = "responses"``, below; their
nonlinear and asymmetric refinements are not implemented) or, with ``method =
"weights"``, by the plain SVD of the weights (data-free); the idea of replacing a filter bank by a low-rank basis is Jaderberg et
al. 2014, "Speeding up Convolutional Neural Networks with Low Rank Expansions"
(BMVC), whose own scheme splits k x k into k x 1 and 1 x k instead. By Eckart-Young the
truncated SVD is the best rank-r approximation of W' in Frobenius norm; the fraction
of ``sum(S**2)`` kept is the layer's *energy*.

MACs per output position drop from ``N*C*k*k`` to ``r*(C*k*k + N)``, so a layer is worth
factorizing only when ``r < N*C*k*k / (C*k*k + N)``; rank-r is also at most
``min(N, C*k*k)``. Eligible layers: ``nn.Conv2d`` with a kernel larger than 1 x 1 and
groups 1, except the model's first convolution unless ``include_first``.

``level`` is the fraction of the whole model's MACs to remove (as counted by
:func:`edgekit.prune.model_stats`). Ranks come from one global energy threshold ``e``
(each eligible layer keeps the fewest singular values holding >= ``e`` of its energy,
and is factorized only if that saves MACs); for a ``level`` the largest ``e`` that still
removes >= ``level`` of MACs is found by bisection. Options (a ``dict``):

- ``energy``: a threshold in (0, 1] instead of a level;
- ``ranks``: ``{layer name: rank}``, explicit ranks for those layers (alone, or with a
  level or energy deciding the other layers);
- ``include_first``: also factorize the first convolution;
- ``round_to``: ranks chosen by a level or energy are rounded up to a multiple of this
  (default 8, capped at the full rank; a layer whose rounded rank no longer saves MACs is
  left as it is). The rank is the channel count between the two convolutions, and INT8
  CPU kernels want channel counts that are multiples of 4 or 8: ONNX Runtime's symmetric
  INT8 convolution (MLAS ConvSym) takes only input channels that are a multiple of 4,
  and with unrounded ranks (6, 13, 25, 33, ...) the factorized ResNet-20 ran 1.57x
  *slower* than the unfactorized one on ``ort-cpu-int8`` (docs/compression.md). The same
  reason sets ``edgekit prune``'s ``round_to`` to 8. 1 keeps the exact ranks. Explicit
  ``ranks`` are never rounded;
- ``allocation``: how a ``level`` is shared among the layers, ``"energy"`` (default: the
  global energy threshold above) or ``"zhang"`` (below). ``"zhang"`` needs a ``level``.

Allocation ``"zhang"`` is the rank selection of Zhang et al., "Accelerating Very Deep
Convolutional Networks for Classification and Detection" (TPAMI 2016, arXiv 1505.06798,
section on rank selection for the whole model): maximise the product over layers of the
energy each layer keeps, ``prod_l sum_{i<=r_l} e_{l,i}``, subject to the model's
complexity, solved greedily: starting from the full ranks, repeatedly drop the singular
value (with ``round_to``: the ``round_to`` of them down to the next multiple) whose
removal loses the least of ``sum_l log(kept energy_l)`` per MAC saved, until >= ``level``
of the model's MACs are gone. As in the paper a layer's cost is linear in its rank,
``r * (C*k*k + N)`` MACs per output position, so the greedy weighs what a rank costs in
each layer against the energy it holds, where one energy threshold for all does not. The
MACs target is checked on the model as deployed: a layer whose rank does not save MACs
stays whole. Zhang et al. take ``e`` as the eigenvalues of the covariance of the layer's
*responses* on training data; edgekit is data-free here and uses the *weight* energy
``e = sigma**2`` of the reshaped weight's SVD (the same energy as the ``"energy"`` rule).
Explicit ``ranks`` and ``include_first`` apply as for ``"energy"``; the smallest rank is
``round_to`` (1 with ``round_to`` 1).

Method ``"responses"`` (option ``method``; ``response_images``, default 256) reconstructs
what the layer *outputs* on training data instead of its weights: Zhang et al. 2015
("Efficient and Accurate Approximations of Nonlinear Convolutional Networks", CVPR,
linear case) approximate the response ``y = W x + b`` by ``y_mean + P P^T (y -
y_mean)``, ``P`` [N, r] the leading eigenvectors of the responses' covariance, which
is the best rank-r reconstruction of the responses in the least-squares sense (and
their eigenvalues are the energies the paper's rank selection uses). The driver
(:func:`edgekit.compress.driver.compress_model`) passes ``response_images`` un-augmented
training images as ``example`` (the technique's ``calibration_images``); every output
position of every image is one sample. The layer becomes the rank-r weight ``P P^T W``,
stored as its own truncated SVD with ``sqrt(S)`` on both factors, like method
``"weights"`` (the direct factors ``P^T W`` and ``P`` compute the same but are unbalanced;
fine-tuning went worse from unbalanced factors in a first version). A conv with a bias keeps the responses' mean through the 1 x 1's bias; one read by a
BatchNorm needs no bias (the BatchNorm statistics, re-estimated after compression, absorb
the constant); one with neither is fit on the uncentered second moment (the best
reconstruction without a bias). On the shared ResNet-20 at -50% MACs (exact ranks, after
adaptive BN, no fine-tuning, all 10,000 test images) it kept 77.0% top-1 against 65.1% for
the weight SVD, 77.1% with ``allocation = "zhang"``, and 89.83% after 8 epochs of KD
against 89.72% (docs/compression.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgekit.compress.base import run_hooked
from edgekit.errors import EdgekitError
from edgekit.layers import LowRankConv2d
from edgekit.structure import set_module

__all__ = ["LowRankConv2d", "TECHNIQUE", "LowRank", "factorize_conv", "parse_ranks"]


def parse_ranks(text: str) -> dict[str, int]:
    """``"layer1.0.conv1=8,layer2.0.conv2=12"`` -> ``{name: rank}``.

    Raises:
        EdgekitError: an item that is not ``NAME=INT``.
    """
    out: dict[str, int] = {}
    for part in (p for p in text.split(",") if p.strip()):
        name, eq, r = part.partition("=")
        try:
            if not eq:
                raise ValueError
            out[name.strip()] = int(r)
        except ValueError:
            raise EdgekitError(
                f"--ranks wants NAME=RANK[,NAME=RANK] with integer ranks, got {part!r}",
                "e.g. --ranks layer1.0.conv1=8,layer1.0.conv2=8",
            ) from None
    return out


def factorize_conv(conv: nn.Conv2d, rank: int, responses: Responses | None = None) -> LowRankConv2d:
    """The rank-``rank`` factorization of ``conv`` (see the module doc).

    Without ``responses``: the truncated SVD of the reshaped weight. With ``responses``
    (method ``"responses"``): the projection of the layer's responses on their ``rank``
    leading principal directions ``P``, i.e. the rank-``rank`` weight ``P P^T W``, split
    by its SVD with ``sqrt(S)`` on both factors (balanced, as for ``"weights"``), and a
    bias (when the conv has one) that keeps the responses' mean.

    At ``rank == min(out, in*k*k)`` it reproduces ``conv`` up to float rounding.

    Raises:
        EdgekitError: a grouped conv; a rank outside [1, min(out, in*k*k)].
    """
    n, c = conv.out_channels, conv.in_channels
    kh, kw = conv.kernel_size
    if conv.groups != 1:
        raise EdgekitError(f"cannot factorize a grouped convolution (groups {conv.groups})")
    full = min(n, c * kh * kw)
    if not 1 <= rank <= full:
        raise EdgekitError(f"rank {rank} is outside [1, {full}]")
    w = conv.weight.detach().to(torch.float64).reshape(n, c * kh * kw)
    bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else None
    if responses is not None:
        # the rank-r weight P P^T W, stored (below) as its own SVD with sqrt(S) on both
        # factors, as the weights' SVD is: reduce = P^T W and expand = P compute the same,
        # but with unbalanced factors (docs/compression.md)
        p = responses.basis[:, :rank]  # [n, rank], orthonormal columns
        w = p @ (p.T @ w)
        if bias is not None:  # y_hat = mean + P P^T (y - mean)
            bias = responses.mean - p @ (p.T @ (responses.mean - bias))
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    new = LowRankConv2d(
        c,
        n,
        rank,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.bias is not None,
        conv.padding_mode,
    )
    dtype = conv.weight.dtype
    with torch.no_grad():
        new.reduce.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, c, kh, kw).to(dtype))
        new.expand.weight.copy_((u[:, :rank] * root).reshape(n, rank, 1, 1).to(dtype))
        if bias is not None:
            new.expand.bias.copy_(bias.to(dtype))
    return new.to(conv.weight.device).train(conv.training)


#: default multiple the chosen ranks are rounded up to (see the module doc)
ROUND_TO = 8
#: rank allocation rules for a MACs target (see the module doc); the first is the default
ALLOCATIONS = ("energy", "zhang")
#: what a factorization reconstructs (see the module doc); the first is the default:
#: "responses" kept 11-22 points more top-1 than "weights" on ResNet-20 and 0.4-0.75 more
#: on ResNet-18 before fine-tuning, in all eight rank rules tried (docs/compression.md)
METHODS = ("responses", "weights")
#: training images whose responses method ``"responses"`` fits, by default
RESPONSE_IMAGES = 256


class Responses:
    """A layer's output statistics for method ``"responses"`` (float64, on the CPU).

    Attributes:
        mean: [N] mean response (bias included) over images and positions.
        basis: [N, N] principal directions of the responses, leading first.
        energies: [N] their eigenvalues (>= 0), same order.
        centered: whether the PCA was on the covariance (a bias or a BatchNorm absorbs
            the mean) or on the uncentered second moment (neither does).
        samples: response vectors (images x positions) behind the statistics.
    """

    def __init__(self, s1, s2, count, centered: bool):
        self.mean = s1 / count
        self.centered = centered
        self.samples = count
        m2 = s2 / count
        if centered:
            m2 = m2 - torch.outer(self.mean, self.mean)
        e, v = torch.linalg.eigh((m2 + m2.T) / 2)
        self.energies = e.flip(0).clamp_min(0)
        self.basis = v.flip(1)


def _following_bn(model: nn.Module, example: torch.Tensor, convs: dict) -> dict[str, nn.Module]:
    """``{conv name: BatchNorm}`` for the convs whose output tensor a BatchNorm consumes
    directly (seen on one forward pass, so no graph tracing is needed)."""
    outs: dict[str, torch.Tensor] = {}
    found: dict[str, nn.Module] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: outs.__setitem__(n, out))
        for n, m in convs.items()
    ]

    def pre(bn, args):
        for n, t in outs.items():
            if args and args[0] is t:
                found[n] = bn

    hooks += [
        m.register_forward_pre_hook(pre)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    run_hooked(model, example, hooks)
    return found


def response_statistics(
    model: nn.Module, images: torch.Tensor, convs: dict[str, nn.Conv2d], batch: int = 64
) -> dict[str, Responses]:
    """Each conv's :class:`Responses` on ``images`` (float32 [B, C, H, W], preprocessed).

    Every output position of every image is one sample (Zhang et al. sample 10 positions
    of 3,000 images). ``model`` is run in eval mode, unchanged.
    """
    was = model.training
    model.eval()
    bns = _following_bn(model, images[:1], convs)
    sums: dict[str, list] = {}

    def hook(_m, _i, out, n):
        y = out.detach().to(torch.float64).transpose(0, 1).reshape(out.shape[1], -1)
        s = sums.setdefault(n, [0.0, 0.0, 0])
        s[0] = s[0] + y.sum(1)
        s[1] = s[1] + y @ y.T
        s[2] += y.shape[1]

    hooks = [
        m.register_forward_hook(lambda m_, i, o, n=n: hook(m_, i, o, n)) for n, m in convs.items()
    ]
    try:
        run_hooked(model, images, hooks, batch)
    finally:
        model.train(was)
    out = {}
    for n, conv in convs.items():
        if n not in sums:
            continue
        s1, s2, count = sums[n]
        centered = conv.bias is not None or n in bns
        out[n] = Responses(s1, s2, count, centered)
    return out


class _Layer:
    """An eligible conv's spectrum and cost, for choosing its rank."""

    def __init__(
        self, name: str, conv: nn.Conv2d, positions: int, responses: Responses | None = None
    ):
        self.name = name
        self.conv = conv
        self.responses = responses
        n, c = conv.out_channels, conv.in_channels
        kk = conv.kernel_size[0] * conv.kernel_size[1]
        self.full = min(n, c * kk)
        self.positions = positions
        self.orig_macs = positions * n * c * kk
        self.per_rank_macs = positions * (c * kk + n)
        if responses is not None:
            e = responses.energies[: self.full]
        else:
            w = conv.weight.detach().to(torch.float64).reshape(n, c * kk)
            e = torch.linalg.svdvals(w) ** 2
        total = float(e.sum())
        self.cum = (e.cumsum(0) / total).tolist() if total > 0 else [1.0] * len(e)

    def macs(self, rank: int) -> int:
        return rank * self.per_rank_macs

    def saves(self, rank: int) -> bool:
        return self.macs(rank) < self.orig_macs

    def max_saving_rank(self) -> int:
        """The largest rank that still saves MACs (0: none does)."""
        return max((r for r in range(1, self.full + 1) if self.saves(r)), default=0)

    def rank_for_energy(self, e: float) -> int:
        for i, c in enumerate(self.cum):
            if c >= e - 1e-12:
                return i + 1
        return self.full

    def energy_kept(self, rank: int) -> float:
        return self.cum[rank - 1]

    def rank_steps(self, round_to: int) -> list[int]:
        """The ranks Zhang's greedy walks through, largest first: the full rank, then the
        multiples of ``round_to`` below it down to ``round_to`` (1 .. full-1 for 1)."""
        top = self.full - 1
        return [self.full] + list(range(top - top % round_to, 0, -round_to))


def zhang_allocation(
    layers: list[_Layer], round_to: int, target_saving: float
) -> dict[str, int] | None:
    """Zhang et al.'s greedy rank selection (see the module doc) on weight energies.

    As in the paper, a layer's complexity is linear in its rank (``rank * (C*k*k + N)``
    MACs per output position) and the greedy starts from the full rank; the step taken is
    the one whose ``log`` energy lost per MAC saved is smallest. It stops as soon as the
    MACs actually saved reach ``target_saving``, counting a layer whose rank does not save
    MACs as left whole (``orig_macs``), which is also how it is deployed.

    Args:
        layers: the layers whose ranks are free.
        round_to: ranks are multiples of this (a step drops ``round_to`` singular values).
        target_saving: MACs to remove (per forward pass, the unit of ``_Layer.orig_macs``).

    Returns:
        ``{name: rank}`` for the layers to factorize (those whose rank saves MACs), or
        ``None`` when every layer at its smallest rank still saves less than
        ``target_saving``.
    """
    import heapq

    steps = {L.name: L.rank_steps(round_to) for L in layers}
    state = {L.name: 0 for L in layers}  # index into steps[name]; 0 is the full rank
    by_name = {L.name: L for L in layers}

    def log_energy(L: _Layer, r: int) -> float:
        return math.log(max(L.energy_kept(r), 1e-300))

    def saving(L: _Layer, r: int) -> int:  # MACs saved as deployed (whole if no saving)
        return max(0, L.orig_macs - L.macs(r))

    def push(heap: list, L: _Layer) -> None:
        i = state[L.name]
        if i + 1 < len(steps[L.name]):
            r, nxt = steps[L.name][i], steps[L.name][i + 1]
            lost = log_energy(L, r) - log_energy(L, nxt)
            # ties (e.g. zero energy lost): layer order, for a deterministic result
            heapq.heappush(heap, (lost / L.macs(r - nxt), order[L.name], L.name))

    order = {L.name: k for k, L in enumerate(layers)}
    heap: list = []
    for L in layers:
        push(heap, L)
    saved = 0
    while saved < target_saving:
        if not heap:
            return None
        name = heapq.heappop(heap)[2]
        L = by_name[name]
        i = state[name]
        saved += saving(L, steps[name][i + 1]) - saving(L, steps[name][i])
        state[name] = i + 1
        push(heap, L)
    return {n: steps[n][i] for n, i in state.items() if by_name[n].saves(steps[n][i])}


def _first_conv(model: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _convs(
    model: nn.Module, example: torch.Tensor, include_first: bool, responses: bool = False
) -> dict[str, _Layer]:
    """Eligible convs (k x k, groups 1, first skipped) with their output positions;
    with ``responses``, their :class:`Responses` on the images ``example``."""
    first = _first_conv(model)
    names = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.groups == 1
        and tuple(m.kernel_size) != (1, 1)
        and (include_first or n != first)
    }
    positions: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, out, n=n: positions.__setitem__(n, out.shape[-1] * out.shape[-2])
        )
        for n, m in names.items()
    ]
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    stats = response_statistics(model, example, names) if responses else {}
    return {n: _Layer(n, m, positions[n], stats.get(n)) for n, m in names.items() if n in positions}


class LowRank:
    """The ``lowrank`` technique (see the module doc for the algorithm and options)."""

    name = "lowrank"
    level_doc = "fraction of MACs removed"

    def check(self, level, options: dict) -> None:
        known = {"energy", "ranks", "include_first", "round_to", "allocation", "method"}
        known.add("response_images")
        unknown = set(options) - known
        if unknown:
            raise EdgekitError(
                f"unknown lowrank option(s): {', '.join(sorted(unknown))}",
                "options are " + ", ".join(sorted(known)),
            )
        method = options.get("method", METHODS[0])
        if method not in METHODS:
            raise EdgekitError(
                f"method {method!r} is not one of {', '.join(METHODS)}",
                "responses (the default): PCA of each layer's outputs on training images "
                "(Zhang et al. 2015); weights: SVD of each layer's weights (data-free)",
            )
        ri = options.get("response_images", RESPONSE_IMAGES)
        if isinstance(ri, bool) or not isinstance(ri, int) or not 16 <= ri <= 100_000:
            raise EdgekitError(
                f"response_images {ri!r} is outside [16, 100000]",
                f"the default {RESPONSE_IMAGES} training images fit method responses",
            )
        alloc = options.get("allocation", "energy")
        if alloc not in ALLOCATIONS:
            raise EdgekitError(
                f"allocation {alloc!r} is not one of {', '.join(ALLOCATIONS)}",
                "energy: one energy threshold for every layer; zhang: Zhang et al.'s "
                "greedy (energy per MAC) for a MACs target",
            )
        rt = options.get("round_to", ROUND_TO)
        if isinstance(rt, bool) or not isinstance(rt, int) or not 1 <= rt <= 1024:
            raise EdgekitError(
                f"round_to {rt!r} is outside [1, 1024]",
                "8 rounds ranks up to multiples of 8 (INT8 CPU kernels); 1 keeps exact ranks",
            )
        energy = options.get("energy")
        ranks = options.get("ranks") or {}
        if level is not None and energy is not None:
            raise EdgekitError(
                "give a MACs reduction or an energy threshold, not both",
                "use --macs 0.5 or --energy 0.9",
            )
        if level is None and energy is None and not ranks:
            raise EdgekitError(
                "lowrank needs a MACs reduction, an energy threshold or explicit ranks",
                "use --macs 0.5, --energy 0.9 or --ranks NAME=RANK[,...]",
            )
        if level is not None and not 0 < level < 1:  # NaN too
            raise EdgekitError(
                f"MACs reduction {level:g} is outside (0, 1)",
                "0.5 removes half of the model's MACs",
            )
        if energy is not None and not 0 < energy <= 1:
            raise EdgekitError(
                f"energy threshold {energy:g} is outside (0, 1]",
                "0.9 keeps, per layer, the singular values holding 90% of sum(s^2)",
            )
        if alloc == "zhang" and level is None:
            raise EdgekitError(
                "allocation zhang shares a MACs reduction among the layers; "
                + ("it takes no energy threshold" if energy is not None else "none was given"),
                "use --macs 0.5 with --allocation zhang (--energy goes with --allocation energy)",
            )
        for name, r in ranks.items():
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise EdgekitError(
                    f"rank {r} for layer {name} is outside the allowed range "
                    "[1, min(out channels, in channels * k * k)]",
                    "a rank must be a whole number >= 1 (0 would remove the layer)",
                )

    def calibration_images(self, options: dict) -> int:
        """Training images :meth:`apply` wants as ``example`` (0: one probe input will do)."""
        if options.get("method", METHODS[0]) != "responses":
            return 0
        return int(options.get("response_images", RESPONSE_IMAGES))

    def apply(self, model: nn.Module, example: torch.Tensor, level, options: dict, log) -> dict:
        include_first = bool(options.get("include_first", False))
        round_to = int(options.get("round_to", ROUND_TO))
        allocation = options.get("allocation", "energy")
        method = options.get("method", METHODS[0])
        energy = options.get("energy")
        ranks_asked: dict[str, int] = dict(options.get("ranks") or {})
        if method == "responses" and len(example) < 16:
            raise EdgekitError(
                f"method responses fits each layer on training images, and got {len(example)}",
                "pass a float32 [B, C, H, W] batch of >= 16 preprocessed training images "
                "as the example (edgekit's compression driver does)",
            )
        layers = _convs(model, example, include_first, method == "responses")
        by_name = dict(model.named_modules())
        for name, r in ranks_asked.items():
            if name not in layers:
                m = by_name.get(name)
                why = (
                    "no such layer"
                    if m is None
                    else f"a {type(m).__name__}"
                    if not isinstance(m, nn.Conv2d)
                    else "the first convolution (pass include_first)"
                    if name == _first_conv(model)
                    else "a 1x1 or grouped convolution"
                )
                some = ", ".join(list(layers)[:6])
                raise EdgekitError(
                    f"cannot factorize layer {name!r}: {why}",
                    f"eligible layers: {some}{' ...' if len(layers) > 6 else ''}",
                )
            if not 1 <= r <= layers[name].full:
                raise EdgekitError(
                    f"rank {r} for layer {name} is outside the allowed range "
                    f"[1, {layers[name].full}] (min(out channels, in channels * k * k))",
                    f"pick a rank from 1 to {layers[name].full}; below "
                    f"{layers[name].max_saving_rank() + 1} it saves MACs",
                )
        if not layers:
            raise EdgekitError(
                "this model has no convolution that low-rank factorization can take",
                "eligible: k x k (k > 1) convolutions with groups 1, the first one excepted",
            )
        from edgekit.prune import model_stats

        total = model_stats(model, example)["macs"]
        free = {n: L for n, L in layers.items() if n not in ranks_asked}
        fixed_saving = sum(
            L.orig_macs - L.macs(ranks_asked[n]) for n, L in layers.items() if n in ranks_asked
        )

        def plan(e: float) -> dict[str, int]:
            out = {}
            for n, L in free.items():
                r = min(L.full, -(-L.rank_for_energy(e) // round_to) * round_to)
                if L.saves(r):
                    out[n] = r
            return out

        def reduction(ranks: dict[str, int]) -> float:
            saved = fixed_saving + sum(
                free[n].orig_macs - free[n].macs(r) for n, r in ranks.items()
            )
            return saved / total

        threshold = None
        chosen: dict[str, int] = {}
        if energy is not None:
            threshold = float(energy)
            chosen = plan(threshold)
        elif level is not None:
            most = plan(0.0)  # the smallest rank everywhere (round_to, or 1)
            if reduction(most) < level:
                raise EdgekitError(
                    f"a MACs reduction of {level:g} cannot be reached by factorizing: at "
                    f"most {reduction(most):.3f} (every eligible layer at rank "
                    f"{round_to}, ranks rounded to "
                    f"multiples of {round_to})",
                    f"use a level of {math.floor(reduction(most) * 100) / 100:g} or less"
                    + ("" if include_first else ", or include the first convolution"),
                )
            if allocation == "zhang":
                got = zhang_allocation(list(free.values()), round_to, level * total - fixed_saving)
                chosen = got if got is not None else most  # None: not reachable (checked)
            else:
                lo, hi = 0.0, 1.0  # reduction(plan(lo)) >= level; find the largest such e
                if reduction(plan(hi)) >= level:
                    lo = hi
                else:
                    for _ in range(50):
                        mid = (lo + hi) / 2
                        if reduction(plan(mid)) >= level:
                            lo = mid
                        else:
                            hi = mid
                threshold = lo
                chosen = plan(lo)
        chosen.update(ranks_asked)
        for n, r in ranks_asked.items():
            if not layers[n].saves(r):
                log(
                    f"  note: rank {r} for {n} costs more MACs than the layer it replaces "
                    f"(it saves MACs below rank {layers[n].max_saving_rank() + 1})"
                )
        for n in sorted(chosen, key=list(layers).index):
            set_module(model, n, factorize_conv(layers[n].conv, chosen[n], layers[n].responses))
        planned = reduction({n: r for n, r in chosen.items() if n in free})
        log(
            f"  factorized {len(chosen)} of {len(layers)} eligible convolutions "
            f"(planned MACs reduction {planned:.1%}"
            + (f", energy threshold {threshold:.4f}" if threshold is not None else "")
            + (
                f", ranks by Zhang et al.'s greedy on {method[:-1]} energy"
                if allocation == "zhang"
                else ""
            )
            + (f", fit on the responses to {len(example)} images" if method == "responses" else "")
            + ")"
        )
        return {
            "method": method,
            **({"response_images": len(example)} if method == "responses" else {}),
            "allocation": allocation,
            "energy_threshold": threshold,
            "include_first": include_first,
            "round_to": round_to,
            "ranks": {n: chosen[n] for n in layers if n in chosen},
            "full_ranks": {n: layers[n].full for n in layers if n in chosen},
            "energy_kept": {
                n: round(layers[n].energy_kept(chosen[n]), 6) for n in layers if n in chosen
            },
            "layers_factorized": len(chosen),
            "layers_eligible": len(layers),
            "macs_reduction": planned,
        }

    def finalize(self, model: nn.Module) -> dict:
        return {}  # the factorized layers are plain convolutions already


TECHNIQUE = LowRank()
