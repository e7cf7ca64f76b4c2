"""Structured channel pruning as a technique (``channel``): a thin wrapper over :mod:`edgekit.prune`.

So that every technique runs through one driver (:mod:`edgekit.compress.driver`), this
puts :func:`edgekit.prune.prune_model` behind the :class:`~edgekit.compress.base.Technique`
protocol: ``level`` is the fraction of MACs removed (``PruneConfig(by="macs")``: the
smallest channel ratio whose pruning removes at least that much), in one pruning step,
with :class:`edgekit.prune.PruneConfig`'s defaults (uniform L2 magnitude, round_to 8;
Fang et al. 2023, DepGraph). ``options`` may set other :class:`~edgekit.prune.PruneConfig`
fields (``importance``, ``round_to``, ``global_pruning``, ``per_layer``, ``ignore``,
``max_layer_ratio``). Channels are removed physically, so there is nothing to finalize.

``edgekit prune`` and ``edgekit run --prune-ratio`` keep their own path (channel ratios
by default); this module changes nothing in :mod:`edgekit.prune`.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.errors import EdgekitError

#: PruneConfig fields a caller may set through ``options``
OPTIONS = ("importance", "round_to", "global_pruning", "per_layer", "ignore", "max_layer_ratio")


def _config(level: float, options: dict):
    from edgekit.prune import PruneConfig

    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise EdgekitError(
            f"unknown channel-pruning option(s): {', '.join(sorted(unknown))}",
            f"options are {', '.join(OPTIONS)}",
        )
    if options.get("importance") == "taylor":
        raise EdgekitError(
            "Taylor importance needs labelled batches, which the compression driver does not pass",
            "use l1, l2 or bn (or edgekit prune --importance taylor)",
        )
    return PruneConfig(ratio=level, by="macs", steps=1, **options)


class Channel:
    """The ``channel`` technique (see the module doc)."""

    name = "channel"
    level_doc = "fraction of MACs removed"

    def check(self, level, options: dict) -> None:
        if level is None or not 0 < level < 1:  # NaN too
            raise EdgekitError(
                f"MACs reduction {level} is outside (0, 1)",
                "0.5 removes half of the model's MACs",
            )
        _config(level, options).validate()

    def apply(
        self, model: nn.Module, example: torch.Tensor, level: float, options: dict, log
    ) -> dict:
        from edgekit.prune import prune_model

        res = prune_model(model, example, _config(level, options), log=log)
        return {
            "channel_ratio": res.channel_ratio,
            "effective_channel_ratio": res.effective_channel_ratio,
            "macs_reduction": res.macs_reduction,
            "config": res.config,
        }

    def finalize(self, model: nn.Module) -> dict:
        return {}


TECHNIQUE = Channel()
