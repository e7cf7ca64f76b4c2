"""Layer shapes as plain data, so pruned models load from safe checkpoints.

Structured pruning (torch-pruning) physically shrinks layers, so a pruned
state dict no longer fits the model its factory builds. Instead of pickling
the pruned module (which would need ``weights_only=False``), edgekit records
each layer's channel counts (:func:`describe_structure`) and, at load time,
rebuilds the factory's model and resizes those layers (:func:`apply_structure`)
before loading the weights.
"""

from __future__ import annotations

from torch import nn

from edgekit.errors import EdgekitError


def _attrs(m: nn.Module) -> dict | None:
    from edgekit.models import PadShortcut

    if isinstance(m, nn.Conv2d):
        return {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
    if isinstance(m, nn.BatchNorm2d):
        return {"type": "BatchNorm2d", "features": m.num_features}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in": m.in_features, "out": m.out_features}
    if isinstance(m, PadShortcut):
        return {"type": "PadShortcut", "before": m.pad_before, "after": m.pad_after}
    return None


def describe_structure(model: nn.Module, reference: nn.Module | None = None) -> dict[str, dict]:
    """Shapes of every conv, BN, linear and option-A shortcut, by module name.

    With ``reference`` (the unpruned model from the same factory) only layers
    that differ from it are recorded; an unpruned model gives ``{}``.
    """
    ref = {n: _attrs(m) for n, m in reference.named_modules()} if reference is not None else {}
    out = {}
    for name, m in model.named_modules():
        a = _attrs(m)
        if a is not None and a != ref.get(name):
            out[name] = a
    return out


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_structure(model: nn.Module, structure: dict[str, dict]) -> nn.Module:
    """Resize layers of ``model`` in place to the recorded shapes (weights are not kept).

    Raises:
        EdgekitError: a recorded layer is absent or of another type.
    """
    for name, a in structure.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise EdgekitError(
                f"checkpoint structure names layer {name!r}, which this model does not have"
            ) from None
        cur = _attrs(m)
        if cur is None or cur["type"] != a.get("type"):
            raise EdgekitError(
                f"checkpoint structure says {name!r} is a {a.get('type')}, "
                f"the model has {type(m).__name__}"
            )
        if cur == a:
            continue
        if a["type"] == "Conv2d":
            new = nn.Conv2d(
                a["in"],
                a["out"],
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                a["groups"],
                m.bias is not None,
                m.padding_mode,
            )
        elif a["type"] == "BatchNorm2d":
            new = nn.BatchNorm2d(a["features"], m.eps, m.momentum, m.affine, m.track_running_stats)
        elif a["type"] == "Linear":
            new = nn.Linear(a["in"], a["out"], m.bias is not None)
        else:
            m.pad_before, m.pad_after = a["before"], a["after"]
            continue
        _set(model, name, new)
    return model
