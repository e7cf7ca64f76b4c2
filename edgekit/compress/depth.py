"""Depth pruning: whole residual blocks dropped (technique ``depth``).

A residual block computes ``y = g(x + f(x))``; with an identity shortcut and ``f``'s
output shape equal to ``x``'s, the network still runs when the block is replaced by
the identity, and fine-tuning recovers most of the accuracy. Huang et al., ECCV 2016
("Deep Networks with Stochastic Depth") train with blocks dropped at random; Veit et
al., NeurIPS 2016 ("Residual Networks Behave Like Ensembles of Relatively Shallow
Networks") drop blocks of a trained ResNet at test time. Unlike channel pruning it
removes whole operators, which is what pays on a small model whose latency is bound by
the number of operators rather than MACs: the shared ResNet-20 with one block per stage
dropped ran at 0.70x on ``ort-cpu-int8`` where no channel pruning went below 0.85x
(``benchmarks/depth_latency.py``, ``docs/compression.md``).

Droppable blocks are found, not named by architecture (:func:`droppable_blocks`): a
submodule (not the model itself) whose output has its input's shape on the example input,
and whose ``torch.fx`` trace ends in an addition of its own input (directly, or through an
``nn.Identity`` or empty ``nn.Sequential`` shortcut), followed by ReLU at most. The innermost such modules count;
blocks with a projection or padding shortcut (the first block of a stage) are not droppable.

Technique ``depth``: level = the fraction of each group's droppable blocks to drop, in
(0, 1) (a group is the droppable blocks that share a parent, e.g. one ResNet stage); the
last ``round(level * n)`` blocks of each group are dropped (a fixed rule, no importance
estimate). Option ``blocks``: module names to drop instead (each must be droppable).
The dropped block becomes ``nn.Identity``, recorded in the checkpoint's ``structure`` as
an ``Identity`` entry so the model loads with ``weights_only=True``.
"""

from __future__ import annotations

import operator

import torch
from torch import nn

from edgekit.compress.base import run_hooked
from edgekit.errors import EdgekitError
from edgekit.structure import set_module

_ADDS = {operator.add, operator.iadd, torch.add}
#: elementwise activations a block may apply after its residual addition
_ACTIVATIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6}
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.Identity)


def last_blocks(groups: dict[str, list[str]], counts: dict[str, int]) -> list[str]:
    """The last ``counts[G]`` blocks of each group G of :func:`droppable_blocks` (0 when
    absent), in the groups' order: what a depth level, a search trial or a benchmark drops."""
    out: list[str] = []
    for g, blocks in groups.items():
        k = min(int(counts.get(g, 0)), len(blocks))
        out += blocks[len(blocks) - k :] if k > 0 else []
    return out


def _is_identity(m: nn.Module) -> bool:
    return isinstance(m, nn.Identity) or (isinstance(m, nn.Sequential) and len(m) == 0)


def _adds_its_input(module: nn.Module) -> bool:
    """Whether the fx trace of ``module`` ends in ``act(x + f(x))`` for its (only) input x."""
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(module)
    except Exception:  # data-dependent control flow: not a block we can judge
        return False
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    x = inputs[0]

    def is_x(a) -> bool:
        if a is x:
            return True
        return (
            isinstance(a, fx.Node)
            and a.op == "call_module"
            and _is_identity(gm.get_submodule(a.target))
            and len(a.args) == 1
            and a.args[0] is x
        )

    # walk back from the output through elementwise activations to the final addition
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    while isinstance(out, fx.Node) and (
        (out.op == "call_function" and out.target in _ACTIVATIONS)
        or (out.op == "call_method" and out.target in ("relu", "relu_"))
        or (out.op == "call_module" and isinstance(gm.get_submodule(out.target), _ACT_MODULES))
    ):
        out = out.args[0]
    is_add = isinstance(out, fx.Node) and (
        (out.op == "call_function" and out.target in _ADDS)
        or (out.op == "call_method" and out.target in ("add", "add_"))
    )
    return bool(is_add and len(out.args) >= 2 and any(is_x(a) for a in out.args[:2]))


def droppable_blocks(model: nn.Module, example: torch.Tensor) -> dict[str, list[str]]:
    """The residual blocks of ``model`` that can be replaced by the identity, by parent.

    Args:
        model: the model (eval mode is kept; one forward pass on ``example``).
        example: float32 [1, C, H, W] input.

    Returns:
        parent module name -> the droppable child block names in forward order
        (module names such as ``layer2.1``; ``""`` is the model itself as parent).
    """
    shapes: dict[str, bool] = {}
    hooks = []
    for name, m in model.named_modules():
        if not name or not any(True for _ in m.parameters()):
            continue

        def hook(mod, args, out, name=name):
            x = args[0] if args else None
            shapes[name] = (
                isinstance(x, torch.Tensor)
                and isinstance(out, torch.Tensor)
                and tuple(x.shape) == tuple(out.shape)
            )

        hooks.append(m.register_forward_hook(hook))
    run_hooked(model, example, hooks)
    found = [n for n, m in model.named_modules() if shapes.get(n) and _adds_its_input(m)]
    # innermost: a container whose single block is droppable is that block
    found = [n for n in found if not any(o.startswith(f"{n}.") for o in found)]
    groups: dict[str, list[str]] = {}
    for name in found:
        groups.setdefault(name.rpartition(".")[0], []).append(name)
    return groups


class Depth:
    name = "depth"
    level_doc = "fraction of each stage's droppable residual blocks dropped"

    def check(self, level, options: dict) -> None:
        unknown = set(options) - {"blocks"}
        if unknown:
            raise EdgekitError(
                f"depth: unknown option(s) {', '.join(sorted(unknown))}", "the option is blocks"
            )
        blocks = options.get("blocks")
        if blocks is not None and (
            not isinstance(blocks, list | tuple) or not all(isinstance(b, str) for b in blocks)
        ):
            raise EdgekitError("depth: blocks must be a list of module names")
        if blocks:
            return
        if level is None or not isinstance(level, int | float) or not 0 < level < 1:
            raise EdgekitError(
                f"depth level {level!r} is outside (0, 1)",
                "give the fraction of each stage's droppable blocks to drop, e.g. 0.5, "
                "or name the blocks with --blocks",
            )

    def apply(self, model: nn.Module, example: torch.Tensor, level, options: dict, log) -> dict:
        groups = droppable_blocks(model, example)
        candidates = [b for g in groups.values() for b in g]
        if not candidates:
            raise EdgekitError(
                "depth: the model has no droppable residual block (a submodule that adds "
                "its input through an identity shortcut and keeps its shape)",
                "use another technique (channel, lowrank) for this model",
            )
        blocks = list(options.get("blocks") or [])
        if blocks:
            bad = [b for b in blocks if b not in candidates]
            if bad:
                raise EdgekitError(
                    f"depth: {', '.join(bad)} cannot be dropped (not a residual block with an "
                    "identity shortcut that keeps its input's shape)",
                    f"droppable blocks: {', '.join(candidates)}",
                )
        else:
            counts = {g: int(round(float(level) * len(b))) for g, b in groups.items()}
            blocks = last_blocks(groups, counts)
            if not blocks:
                smallest = min(len(g) for g in groups.values())
                raise EdgekitError(
                    f"depth level {level:g} drops no block (the stages have "
                    + ", ".join(str(len(g)) for g in groups.values())
                    + " droppable blocks)",
                    f"use a level of at least {0.5 / max(len(g) for g in groups.values()):.2f}"
                    f" (or name blocks with --blocks; smallest stage: {smallest})",
                )
        for b in blocks:
            set_module(model, b, nn.Identity())
        log(f"  dropped {len(blocks)} of {len(candidates)} droppable blocks: {', '.join(blocks)}")
        return {
            "dropped": blocks,
            "droppable": candidates,
            "rule": "named" if options.get("blocks") else "last round(level*n) of each stage",
        }

    def finalize(self, model: nn.Module) -> dict:
        return {}


TECHNIQUE = Depth()
