"""Weight sparsity: unstructured L1 magnitude pruning and the 2:4 (N:M) pattern.

Both zero individual weights of ``nn.Conv2d``/``nn.Linear`` layers and keep the layer
shapes, so the exported ONNX is the dense model with zeros in it. Which backends run
zeros faster is the question these techniques answer (docs/compression.md): none of the
CPU backends here has sparse kernels, so their latency is the dense model's; the saving
shows in the zipped artifact size (``zip_mb`` of a report row).

- ``unstructured`` (level = sparsity in [0, 1)): the weights of smallest magnitude are
  zeroed, ranked over all layers at once (``scope="global"``, the default;
  ``torch.nn.utils.prune.global_unstructured``) or within each layer
  (``scope="layer"``; ``torch.nn.utils.prune.l1_unstructured``). Han et al. 2015,
  "Learning both Weights and Connections for Efficient Neural Networks".
- ``2:4`` (level = 0.5, fixed by the pattern): in every group of 4 consecutive weights
  along the input-channel dimension (for a conv, at each output channel and kernel
  position), the 2 of largest magnitude are kept: the pattern NVIDIA's sparse tensor
  cores (Ampere and later) run at twice the dense math rate. Mishra et al. 2021,
  "Accelerating Sparse Deep Neural Networks" (arXiv:2104.08378): prune a trained dense
  model once by magnitude, then fine-tune with the mask fixed. A layer whose input
  channels (per group) are not a multiple of 4 cannot hold the pattern: it is skipped
  and named in the record, or refused when the user named it in ``layers``.

The masks are ``torch.nn.utils.prune`` re-parametrizations (``weight = weight_orig *
weight_mask``), so fine-tuning with :func:`edgekit.train.fit` keeps them fixed;
:meth:`finalize` makes the weights plain again (``prune.remove``) and measures the
sparsity reached.

Options (``options`` dict): ``layers`` (list of module names; default every
``Conv2d``/``Linear``), ``ignore`` (module names left dense), ``scope``
(``"global"``/``"layer"``, unstructured only).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from edgekit.errors import EdgekitError

#: kept weights per group and group size of the 2:4 pattern
N_KEEP, M_GROUP = 2, 4


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Conv2d``/``nn.Linear`` with a weight, in order."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and getattr(m, "weight", None) is not None
    ]


def _choose(model: nn.Module, options: dict) -> list[tuple[str, nn.Module]]:
    """The layers to sparsify: ``options["layers"]`` (all must exist) or all of them,
    minus ``options["ignore"]``.

    Raises:
        EdgekitError: a named layer that is not a Conv2d/Linear of the model.
    """
    layers = weight_layers(model)
    known = dict(layers)
    for key in ("layers", "ignore"):
        unknown = [n for n in options.get(key) or [] if n not in known]
        if unknown:
            raise EdgekitError(
                f"{key}: no Conv2d/Linear layer named {', '.join(map(repr, unknown))} in the model",
                f"choose among: {', '.join(known) or '(none)'}",
            )
    if options.get("layers"):
        layers = [(n, known[n]) for n in options["layers"]]
    ignore = set(options.get("ignore") or [])
    layers = [(n, m) for n, m in layers if n not in ignore]
    if not layers:
        raise EdgekitError("no Conv2d/Linear layer left to sparsify", "check --layers/--ignore")
    return layers


def _check_options(options: dict) -> None:
    for key in ("layers", "ignore"):
        v = options.get(key)
        if v is not None and not (
            isinstance(v, list | tuple) and all(isinstance(s, str) for s in v)
        ):
            raise EdgekitError(f"option {key} must be a list of layer names, got {v!r}")


def nm_mask(weight: torch.Tensor, n: int = N_KEEP, m: int = M_GROUP) -> torch.Tensor:
    """The N:M mask of a conv/linear ``weight``: in every group of ``m`` consecutive
    weights along dimension 1 (input channels per group), the ``n`` of largest
    magnitude are 1 and the rest 0 (``torch.topk``; which of equal magnitudes is kept
    is unspecified).

    Args:
        weight: float [O, I] (Linear) or [O, I, kh, kw] (Conv2d), I a multiple of ``m``.

    Returns:
        A float mask of ``weight``'s shape and dtype.

    Raises:
        ValueError: dimension 1 is not a multiple of ``m``.
    """
    if weight.shape[1] % m:
        raise ValueError(f"dimension 1 ({weight.shape[1]}) is not a multiple of {m}")
    w = weight.detach().abs()
    # input channels last, so that a group is m consecutive input channels at one
    # output channel and kernel position
    w = w.movedim(1, -1)
    shape = w.shape
    g = w.reshape(-1, m)
    keep = g.topk(n, dim=1, sorted=False).indices
    mask = torch.zeros_like(g).scatter_(1, keep, 1.0)
    return mask.reshape(shape).movedim(-1, 1).contiguous().to(weight.dtype)


def group_zeros_ok(weight: torch.Tensor, n: int = N_KEEP, m: int = M_GROUP) -> bool:
    """Whether every group of ``m`` weights along dimension 1 has at most ``n`` nonzeros."""
    g = weight.detach().movedim(1, -1).reshape(-1, m)
    return bool(((g != 0).sum(dim=1) <= n).all())


def _in_per_group(m: nn.Module) -> int:
    return int(m.weight.shape[1])


def measured_sparsity(model: nn.Module, names: list[str] | None = None) -> dict:
    """Zeros among the weights of ``model``'s Conv2d/Linear layers (biases excluded).

    Returns:
        ``{"layers": [{"layer", "weights", "zeros", "sparsity"}], "weights", "zeros",
        "sparsity"}`` over every such layer, plus ``sparsity_pruned`` over ``names``
        (the layers that were sparsified) when given.
    """
    rows = []
    for n, m in weight_layers(model):
        w = m.weight.detach()
        z = int((w == 0).sum())
        rows.append({"layer": n, "weights": w.numel(), "zeros": z, "sparsity": z / w.numel()})
    tot = sum(r["weights"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    out = {"layers": rows, "weights": tot, "zeros": zeros, "sparsity": zeros / tot if tot else 0.0}
    if names is not None:
        sel = [r for r in rows if r["layer"] in set(names)]
        w = sum(r["weights"] for r in sel)
        out["sparsity_pruned"] = sum(r["zeros"] for r in sel) / w if w else 0.0
    return out


def _finalize(model: nn.Module) -> tuple[dict, list[str]]:
    """Make the pruned weights plain (``prune.remove``); the sparsity reached and the
    names of the layers that were pruned."""
    names = []
    for n, m in weight_layers(model):
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
            names.append(n)
    return {"sparsity_reached": measured_sparsity(model, names)}, names


class Unstructured:
    """Technique ``unstructured``: L1 magnitude pruning of individual weights."""

    name = "unstructured"
    level_doc = "sparsity: fraction of the Conv2d/Linear weights set to zero, in [0, 1)"

    def check(self, level: float, options: dict) -> None:
        if not 0 <= level < 1:  # NaN too
            raise EdgekitError(
                f"sparsity {level} is outside [0, 1)",
                "give the fraction of weights to zero, e.g. 0.5",
            )
        if options.get("scope", "global") not in ("global", "layer"):
            raise EdgekitError(
                f"scope {options.get('scope')!r} is not global or layer",
                "global ranks weights over all layers; layer prunes each layer to the sparsity",
            )
        _check_options(options)

    def apply(self, model, example, level, options, log) -> dict:
        layers = _choose(model, options)
        scope = options.get("scope", "global")
        if scope == "global":
            prune.global_unstructured(
                [(m, "weight") for _, m in layers], prune.L1Unstructured, amount=float(level)
            )
        else:
            for _, m in layers:
                prune.l1_unstructured(m, "weight", amount=float(level))
        log(
            f"  unstructured L1 ({scope}): {level:.0%} of the weights of {len(layers)} layers zeroed"
        )
        return {"scope": scope, "layers_pruned": [n for n, _ in layers], "skipped": []}

    def finalize(self, model) -> dict:
        return _finalize(model)[0]


class TwoFour:
    """Technique ``2:4``: 2 of every 4 consecutive input-channel weights kept."""

    name = "2:4"
    level_doc = "sparsity, fixed at 0.5 by the 2:4 pattern (2 of every 4 weights kept)"

    def check(self, level: float, options: dict) -> None:
        if not 0 <= level < 1:
            raise EdgekitError(f"sparsity {level} is outside [0, 1)", "2:4 has sparsity 0.5")
        if level != N_KEEP / M_GROUP:
            raise EdgekitError(
                f"the 2:4 pattern zeros exactly half the weights; a sparsity of {level} is not it",
                "use level 0.5 for 2:4, or technique unstructured for another sparsity",
            )
        _check_options(options)

    def apply(self, model, example, level, options, log) -> dict:
        layers = _choose(model, options)
        explicit = set(options.get("layers") or [])
        bad = [(n, m) for n, m in layers if _in_per_group(m) % M_GROUP]
        named_bad = [n for n, _ in bad if n in explicit]
        if named_bad:
            n = named_bad[0]
            raise EdgekitError(
                f"layer {n} has {_in_per_group(dict(layers)[n])} input channels per group, not a "
                f"multiple of {M_GROUP}, so it cannot hold the 2:4 pattern",
                "leave it out of --layers (without --layers such layers are skipped with a note)",
            )
        skipped = []
        for n, m in bad:
            why = f"{_in_per_group(m)} input channels per group, not a multiple of {M_GROUP}"
            log(f"  2:4: skipping layer {n} ({why}); it stays dense")
            skipped.append({"layer": n, "reason": why})
        done = []
        for n, m in layers:
            if _in_per_group(m) % M_GROUP == 0:
                prune.custom_from_mask(m, "weight", nm_mask(m.weight))
                done.append(n)
        if not done:
            raise EdgekitError(
                "no layer can hold the 2:4 pattern (input channels per group not a multiple of 4)"
            )
        log(f"  2:4: pattern applied to {len(done)} layers, {len(skipped)} skipped")
        return {"pattern": "2:4", "layers_pruned": done, "skipped": skipped}

    def finalize(self, model) -> dict:
        out, names = _finalize(model)
        mods = dict(weight_layers(model))  # the pattern, checked on the final weights
        out["pattern_holds"] = all(group_zeros_ok(mods[n].weight) for n in names)
        return out


UNSTRUCTURED = Unstructured()
TWO_FOUR = TwoFour()
#: the registry's default attribute (``edgekit.compress.sparsity`` is ``unstructured``;
#: ``2:4`` is registered as ``edgekit.compress.sparsity:TWO_FOUR``)
TECHNIQUE = UNSTRUCTURED
