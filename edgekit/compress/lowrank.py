"""Low-rank factorization of convolutions by truncated SVD (technique ``lowrank``).

A k x k convolution with weight W [N, C, k, k] (groups 1) is reshaped to the matrix
W' [N, C*k*k] and replaced by its rank-r truncated SVD W' ~ U_r S_r V_r^T, deployed as two
ordinary convolutions (:class:`edgekit.layers.LowRankConv2d`):

- ``reduce``: a k x k conv with r filters, weight ``sqrt(S_r) V_r^T`` reshaped to
  [r, C, k, k] (same stride, padding and dilation as the original, no bias);
- ``expand``: a 1 x 1 conv with weight ``U_r sqrt(S_r)`` [N, r, 1, 1], which takes the
  original bias.

This is the two-layer decomposition of Zhang et al. 2015, "Accelerating Very Deep
Convolutional Networks for Classification and Detection" (TPAMI 38(10)), here solved
with the plain SVD of the weights (their data-driven, nonlinear solution is not
implemented); the idea of replacing a filter bank by a low-rank basis is Jaderberg et
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
"""

from __future__ import annotations

import math

import torch
from torch import nn

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


def factorize_conv(conv: nn.Conv2d, rank: int) -> LowRankConv2d:
    """The rank-``rank`` truncated-SVD factorization of ``conv`` (see the module doc).

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
        if conv.bias is not None:
            new.expand.bias.copy_(conv.bias.detach())
    return new.to(conv.weight.device).train(conv.training)


#: default multiple the chosen ranks are rounded up to (see the module doc)
ROUND_TO = 8
#: rank allocation rules for a MACs target (see the module doc); the first is the default
ALLOCATIONS = ("energy", "zhang")


class _Layer:
    """An eligible conv's spectrum and cost, for choosing its rank."""

    def __init__(self, name: str, conv: nn.Conv2d, positions: int):
        self.name = name
        self.conv = conv
        n, c = conv.out_channels, conv.in_channels
        kk = conv.kernel_size[0] * conv.kernel_size[1]
        self.full = min(n, c * kk)
        self.positions = positions
        self.orig_macs = positions * n * c * kk
        self.per_rank_macs = positions * (c * kk + n)
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


def _convs(model: nn.Module, example: torch.Tensor, include_first: bool) -> dict[str, _Layer]:
    """Eligible convs (k x k, groups 1, first skipped) with their output positions."""
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
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {n: _Layer(n, m, positions[n]) for n, m in names.items() if n in positions}


class LowRank:
    """The ``lowrank`` technique (see the module doc for the algorithm and options)."""

    name = "lowrank"
    level_doc = "fraction of MACs removed"

    def check(self, level, options: dict) -> None:
        unknown = set(options) - {"energy", "ranks", "include_first", "round_to", "allocation"}
        if unknown:
            raise EdgekitError(
                f"unknown lowrank option(s): {', '.join(sorted(unknown))}",
                "options are energy, ranks, include_first, round_to, allocation",
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

    def apply(self, model: nn.Module, example: torch.Tensor, level, options: dict, log) -> dict:
        include_first = bool(options.get("include_first", False))
        round_to = int(options.get("round_to", ROUND_TO))
        allocation = options.get("allocation", "energy")
        energy = options.get("energy")
        ranks_asked: dict[str, int] = dict(options.get("ranks") or {})
        layers = _convs(model, example, include_first)
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
            set_module(model, n, factorize_conv(layers[n].conv, chosen[n]))
        planned = reduction({n: r for n, r in chosen.items() if n in free})
        log(
            f"  factorized {len(chosen)} of {len(layers)} eligible convolutions "
            f"(planned MACs reduction {planned:.1%}"
            + (f", energy threshold {threshold:.4f}" if threshold is not None else "")
            + (", ranks by Zhang et al.'s greedy on weight energy" if allocation == "zhang" else "")
            + ")"
        )
        return {
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
