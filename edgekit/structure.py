"""Layer shapes as plain data, so pruned models load from safe checkpoints.

Structured pruning (torch-pruning) physically shrinks layers, so a pruned
state dict no longer fits the model its factory builds. Instead of pickling
the pruned module (which would need ``weights_only=False``), edgekit records
each layer's channel counts (:func:`describe_structure`) and, at load time,
rebuilds the factory's model and resizes those layers (:func:`apply_structure`)
before loading the weights.

Low-rank factorization (:mod:`edgekit.compress.lowrank`) replaces a convolution by a
:class:`edgekit.layers.LowRankConv2d`; its entry (``LowRankConv2d``: ``in``, ``out``,
``rank``) makes :func:`apply_structure` swap the factory's ``nn.Conv2d`` for one, with
the original's kernel, stride, padding, dilation and bias.

Depth pruning (:mod:`edgekit.compress.depth`) replaces a residual block by ``nn.Identity``;
its entry (``Identity``, no fields) makes :func:`apply_structure` drop the factory's block
(any module type) before the weights load.
"""

from __future__ import annotations

from torch import nn

from edgekit.errors import EdgekitError
from edgekit.layers import LowRankConv2d
from edgekit.schema import Choice, Dict, Int, MapOf, Str, validate

#: Largest channel count (or padding) a recorded structure may ask for.
MAX_CHANNELS = 65_536

_DIM = Int(min=1, max=MAX_CHANNELS, required=True)
_PAD = Int(min=0, max=MAX_CHANNELS, required=True)
#: The schema of one ``structure`` entry, by its ``type``.
ENTRY_SCHEMAS = {
    "Conv2d": Dict({"type": Str(), "in": _DIM, "out": _DIM, "groups": _DIM}),
    "BatchNorm2d": Dict({"type": Str(), "features": _DIM}),
    "Linear": Dict({"type": Str(), "in": _DIM, "out": _DIM}),
    "PadShortcut": Dict({"type": Str(), "before": _PAD, "after": _PAD}),
    "LowRankConv2d": Dict({"type": Str(), "in": _DIM, "out": _DIM, "rank": _DIM}),
    # a whole module (a residual block) dropped by edgekit.compress.depth: nn.Identity
    "Identity": Dict({"type": Str()}),
}
#: entry type -> the module types (by ``_attrs`` type) a recorded entry may replace
_REPLACES = {"LowRankConv2d": ("Conv2d", "LowRankConv2d")}


def check_structure(structure, where: str) -> None:
    """Type- and range-check a checkpoint's ``structure`` record before anything is built.

    Raises:
        EdgekitError: not a table of layer name -> entry; an unknown ``type``; a
            channel count outside [1, :data:`MAX_CHANNELS`]; groups that do not
            divide the channels.
    """
    entries = MapOf(
        Dict({"type": Choice(*ENTRY_SCHEMAS, required=True)}, extra=True),
        keys=Str(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", doc="a module name such as layer1.0.conv1"),
    )
    validate(structure, entries, where, "structure")
    for name, a in structure.items():
        path = f"structure.{name}"
        validate(a, ENTRY_SCHEMAS[a["type"]], where, path)
        if a["type"] == "Conv2d" and (a["in"] % a["groups"] or a["out"] % a["groups"]):
            raise EdgekitError(
                f"{where}: {path}: groups {a['groups']} does not divide in {a['in']} and "
                f"out {a['out']}"
            )


def _is_pad_shortcut(m: nn.Module) -> bool:
    """An option-A shortcut (``edgekit.models.PadShortcut``), recognised by its attributes.

    Duck typing keeps this module free of an import of :mod:`edgekit.models`
    (which imports this one): ``structure`` must not depend on ``models``.
    """
    return isinstance(getattr(m, "pad_before", None), int) and isinstance(
        getattr(m, "pad_after", None), int
    )


def _attrs(m: nn.Module) -> dict | None:
    if isinstance(m, nn.Identity):
        return {"type": "Identity"}
    if isinstance(m, LowRankConv2d):
        return {"type": "LowRankConv2d", "in": m.in_channels, "out": m.out_channels, "rank": m.rank}
    if isinstance(m, nn.Conv2d):
        return {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
    if isinstance(m, nn.BatchNorm2d):
        return {"type": "BatchNorm2d", "features": m.num_features}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in": m.in_features, "out": m.out_features}
    if _is_pad_shortcut(m):
        return {"type": "PadShortcut", "before": m.pad_before, "after": m.pad_after}
    return None


def describe_structure(model: nn.Module, reference: nn.Module | None = None) -> dict[str, dict]:
    """Shapes of every conv, BN, linear and option-A shortcut, by module name.

    With ``reference`` (the unpruned model from the same factory) only layers
    that differ from it are recorded; an unpruned model gives ``{}``.
    """
    ref = {n: _attrs(m) for n, m in reference.named_modules()} if reference is not None else {}
    out = {}
    inside: list[str] = []  # LowRankConv2d modules: their two convs follow from the entry
    for name, m in model.named_modules():
        if any(name.startswith(f"{p}.") for p in inside):
            continue
        if isinstance(m, LowRankConv2d):
            inside.append(name)
        a = _attrs(m)
        if a is not None and a != ref.get(name):
            out[name] = a
    return out


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace ``model``'s submodule ``name`` (dotted, e.g. ``layer2.1``) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _kernel(m: nn.Module) -> tuple[int, ...]:
    return tuple((m.reduce if isinstance(m, LowRankConv2d) else m).kernel_size)


def _implied_shapes(m: nn.Module, name: str, a: dict, sd: dict) -> dict[str, tuple[int, ...]]:
    """The state-dict tensor shapes a structure entry implies for layer ``m``."""
    if a["type"] == "Conv2d":
        shape = (a["out"], a["in"] // a["groups"], *m.kernel_size)
        return {f"{name}.weight": shape}
    if a["type"] == "BatchNorm2d":
        keys = [k for k in (f"{name}.weight", f"{name}.running_mean") if k in sd]
        return {k: (a["features"],) for k in keys or [f"{name}.weight"]}
    if a["type"] == "Linear":
        return {f"{name}.weight": (a["out"], a["in"])}
    if a["type"] == "LowRankConv2d":
        return {
            f"{name}.reduce.weight": (a["rank"], a["in"], *_kernel(m)),
            f"{name}.expand.weight": (a["out"], a["rank"], 1, 1),
        }
    return {}


def apply_structure(
    model: nn.Module,
    structure: dict[str, dict],
    state_dict: dict | None = None,
    where: str = "checkpoint",
) -> nn.Module:
    """Resize layers of ``model`` in place to the recorded shapes (weights are not kept).

    Args:
        state_dict: the checkpoint's tensors; when given, each resized layer's
            weight shape must already be in it, so a structure can never make
            edgekit allocate more than the checkpoint itself holds (a crafted
            entry asking for a 256 GB layer is refused before allocation).
        where: the checkpoint, named in errors.

    Raises:
        EdgekitError: a malformed entry (see :func:`check_structure`); a recorded
            layer that is absent or of another type; a shape the checkpoint's
            tensors do not have.
    """
    check_structure(structure, where)
    for name, a in structure.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise EdgekitError(
                f"checkpoint structure names layer {name!r}, which this model does not have"
            ) from None
        if a["type"] == "Identity":  # a dropped block: whatever the factory built there
            set_module(model, name, nn.Identity())
            continue
        cur = _attrs(m)
        if cur is None or cur["type"] not in _REPLACES.get(a["type"], (a["type"],)):
            raise EdgekitError(
                f"checkpoint structure says {name!r} is a {a.get('type')}, "
                f"the model has {type(m).__name__}"
            )
        if cur == a:
            continue
        if state_dict is not None:
            for key, shape in _implied_shapes(m, name, a, state_dict).items():
                have = state_dict.get(key)
                if have is None or tuple(have.shape) != shape:
                    got = "no such tensor" if have is None else f"{list(have.shape)}"
                    raise EdgekitError(
                        f"{where}: structure says {name} is {a}, so {key} should be "
                        f"{list(shape)}, but the checkpoint has {got}",
                        "the checkpoint is corrupt or was edited; save it again with edgekit",
                    )
        if a["type"] == "LowRankConv2d":
            conv = m.reduce if isinstance(m, LowRankConv2d) else m
            if conv.groups != 1:
                raise EdgekitError(
                    f"{where}: structure says {name} is a LowRankConv2d, but the model's "
                    f"layer is a grouped convolution (groups {conv.groups})",
                    "the checkpoint is corrupt or was edited; save it again with edgekit",
                )
            bias = (m.expand if isinstance(m, LowRankConv2d) else m).bias is not None
            new = LowRankConv2d(
                a["in"],
                a["out"],
                a["rank"],
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                bias,
                conv.padding_mode,
            )
        elif a["type"] == "Conv2d":
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
        set_module(model, name, new)
    return model
