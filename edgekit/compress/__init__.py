"""Compression techniques other than structured channel pruning (issue 17), one module each.

Every technique implements :class:`edgekit.compress.base.Technique` and is run by one
driver, :func:`edgekit.compress.driver.compress_checkpoint`: apply the technique to a
trained model, fine-tune it with the same loop as ``edgekit train`` (KD optional), make
its weights plain again, save an edgekit checkpoint. The checkpoint then goes through
export, lowering and the harness like any other model, so every technique is measured on
the same targets. Channel pruning keeps its own module (:mod:`edgekit.prune`).

The registry maps a technique name to the module that defines it; modules are imported
only when a technique is asked for, so ``edgekit --help`` stays light.
"""

from __future__ import annotations

import importlib

from edgekit.errors import EdgekitError

#: technique name -> module defining ``TECHNIQUE`` (an object implementing the protocol),
#: or ``module:ATTR`` for a module defining several techniques
TECHNIQUES: dict[str, str] = {
    "channel": "edgekit.compress.channel",
    "lowrank": "edgekit.compress.lowrank",
    "unstructured": "edgekit.compress.sparsity",
    "2:4": "edgekit.compress.sparsity:TWO_FOUR",
    "cluster": "edgekit.compress.cluster",
    "depth": "edgekit.compress.depth",
}


def register(name: str, module: str) -> None:
    """Add a technique: ``module`` must define ``TECHNIQUE`` (or ``module:ATTR``, ``ATTR``)."""
    TECHNIQUES[name] = module


def technique_names() -> list[str]:
    return sorted(TECHNIQUES)


def get_technique(name: str):
    """The technique object called ``name``.

    Raises:
        EdgekitError: an unknown name (the message lists the known ones).
    """
    mod = TECHNIQUES.get(name)
    if mod is None:
        raise EdgekitError(
            f"unknown compression technique {name!r}",
            f"choose one of: {', '.join(technique_names())}",
        )
    mod, _, attr = mod.partition(":")
    return getattr(importlib.import_module(mod), attr or "TECHNIQUE")
