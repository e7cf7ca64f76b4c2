"""Named training recipes (``edgekit train --recipe``), their parameter groups and lr schedule.

``default``: today's recipe: SGD, momentum 0.9 (no Nesterov), weight decay 5e-4 on
every parameter, batch 128, lr 0.1, cosine to 0 over the steps, label smoothing 0.1,
30 epochs.

``cifar-fast``: the recipe that took the edgekit ResNet-18 to 94.76% top-1 on the full
CIFAR-10 test set in 150 epochs on one H100 (issue 12; the shared checkpoint
``resnet18-cifar10-1ff45430.pt``): SGD with Nesterov momentum 0.9, weight decay 5e-4
*not* applied to BatchNorm weights and biases nor any other 1-D parameter (biases),
batch 256, peak lr 0.2 reached by a linear warm-up over the first 2 epochs, then
cosine to 0, label smoothing 0.1, 150 epochs. Excluding normalisation parameters from
weight decay follows Goyal et al. 2017 ("Accurate, Large Minibatch SGD", sec. 5.1:
"no weight decay on gamma and beta") and the warm-up follows the same paper (sec. 2.2).

Explicit options override a recipe's values: :func:`edgekit.train.make_config` takes them as
keyword arguments and ignores the ones that are None. This module does not import
:mod:`edgekit.train` (no import cycle): it holds plain data and functions.
"""

from __future__ import annotations

import math

from edgekit.errors import EdgekitError

RECIPES: dict[str, dict] = {
    "default": {
        "epochs": 30,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "decay_1d": True,
        "warmup_epochs": 0.0,
        "label_smoothing": 0.1,
    },
    "cifar-fast": {
        "epochs": 150,
        "batch_size": 256,
        "lr": 0.2,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "decay_1d": False,
        "warmup_epochs": 2.0,
        "label_smoothing": 0.1,
    },
}


#: field -> (option, low, high, low inclusive): the ranges :func:`check_values` enforces.
#: NaN fails every range; inf fails the finite upper bounds.
RANGES = {
    "lr": ("--lr", 0.0, 100.0, False),
    "momentum": ("--momentum", 0.0, 1.0, True),
    "weight_decay": ("--weight-decay", 0.0, 1.0, True),
    "label_smoothing": ("--label-smoothing", 0.0, 0.999, True),
    "seed": ("--seed", 0, 2**32 - 1, True),
    "kd_features": ("--kd-features", 0.0, 1e6, True),
    # a week: a larger (or infinite) budget would train 10**6 epochs
    "time_budget_s": ("the fine-tuning budget (s)", 0.0, 7 * 24 * 3600.0, False),
}


def check_values(values: dict) -> None:
    """Refuse training values outside :data:`RANGES` (NaN, inf, negative rates) up front.

    Raises:
        EdgekitError: naming the option, its allowed range and the value given.
    """
    for key, (option, lo, hi, lo_incl) in RANGES.items():
        v = values.get(key)
        if v is None:
            continue
        ok = (lo <= v if lo_incl else lo < v) and v <= hi  # False for NaN
        if not ok:
            bracket = "[" if lo_incl else "("
            raise EdgekitError(f"{option} must be in {bracket}{_num(lo)}, {_num(hi)}], got {v}")


def _num(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def param_groups(model, weight_decay: float, decay_1d: bool = True) -> list[dict]:
    """Optimizer parameter groups: weight decay on all, or not on 1-D parameters.

    Args:
        model: an ``nn.Module``; only parameters with ``requires_grad`` are included.
        weight_decay: the decay of the decayed group.
        decay_1d: False = BatchNorm weights and biases and every other 1-D parameter
            (biases) go in a second group with ``weight_decay`` 0.

    Returns:
        ``[{"params": [...], "weight_decay": wd}, {"params": [...], "weight_decay": 0.0}]``
        (one group when ``decay_1d`` or when there is nothing 1-D).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_1d:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based) of ``total``.

    Linear warm-up ``(step + 1) / warmup`` for the first ``warmup`` steps, then a cosine
    from 1 to 0 over the remaining ``total - warmup`` steps:
    ``0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``. With ``warmup`` 0 this
    is ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``eta_min`` 0.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
