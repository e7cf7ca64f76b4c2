"""The model zoo, user models by import path, and safe checkpoints.

Names (``--model``):

- ``resnet18``: torchvision ResNet-18 with the CIFAR stem (3x3 conv, stride 1,
  no max-pool) and ``fc -> num_classes``.
- ``resnet18-tv``: the unmodified torchvision ResNet-18 with a new ``fc``.
- ``resnet50``: torchvision ResNet-50 with the CIFAR stem.
- ``resnet8``/``20``/``32``/``44``/``56``/``110``: the CIFAR ResNets of He et al. 2016,
  "Deep Residual Learning for Image Recognition", sec. 4.2, with option-A
  (parameter-free, zero-padded) shortcuts. ``resnet8`` (n=1, 75k parameters) is the
  small default that ``edgekit run`` trains in about a minute on two cores. They load the public checkpoint
  format of Y. Idelbayev's ``pytorch_resnet_cifar10`` (``module.``-prefixed keys
  under ``state_dict``), which was trained with ImageNet normalization.
- ``package.module:factory``: any user model; ``factory(num_classes=N)`` (or
  ``factory()``) must return an ``nn.Module`` mapping float32 [N, 3, H, W] to
  logits [N, num_classes].

Checkpoints are always read with ``torch.load(..., weights_only=True)``.
edgekit's own checkpoint (:func:`save_checkpoint`) is a dict of plain types:
the model spec, the class count, the state dict and, for pruned models, the
pruned layer shapes, so it loads without unpickling code.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import EdgekitError

CHECKPOINT_FORMAT = "edgekit-checkpoint/1"


# --- He et al. CIFAR ResNets (option-A shortcuts) ---------------------------------------


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels.

    Maps [N, C_in, H, W] to [N, C_in + pad_before + pad_after, H/stride, W/stride].
    Parameter-free, as in He et al. 2016 sec. 4.2.
    """

    def __init__(self, stride: int, pad_before: int, pad_after: int):
        super().__init__()
        self.stride = stride
        self.pad_before = pad_before
        self.pad_after = pad_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlockA(nn.Module):
    """Two 3x3 conv-BN layers with an identity or option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            extra = planes - in_planes
            self.shortcut: nn.Module = PadShortcut(stride, extra // 2, extra - extra // 2)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: widths 16/32/64, global average pool, linear.

    Input float32 [N, 3, H, W]; output logits float32 [N, num_classes].
    """

    def __init__(self, depth: int, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        layers = []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlockA(in_planes, w, stride))
                in_planes = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# --- torchvision ResNets --------------------------------------------------------------


def _cifar_stem(model: nn.Module) -> nn.Module:
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _tv(name: str, num_classes: int, cifar_stem: bool) -> nn.Module:
    from torchvision import models as tvm

    model = getattr(tvm, name)(weights=None, num_classes=num_classes)
    return _cifar_stem(model) if cifar_stem else model


@dataclass(frozen=True)
class ModelInfo:
    """A zoo entry: ``factory(num_classes)`` and the normalization its public weights used."""

    factory: Callable[[int], nn.Module]
    normalization: str | None = None
    description: str = ""


MODELS: dict[str, ModelInfo] = {
    "resnet18": ModelInfo(
        lambda n: _tv("resnet18", n, True), None, "torchvision ResNet-18, CIFAR stem (11.2M params)"
    ),
    "resnet18-tv": ModelInfo(
        lambda n: _tv("resnet18", n, False), None, "torchvision ResNet-18, ImageNet stem"
    ),
    "resnet50": ModelInfo(
        lambda n: _tv("resnet50", n, True), None, "torchvision ResNet-50, CIFAR stem"
    ),
    **{
        f"resnet{d}": ModelInfo(
            lambda n, d=d: CifarResNet(d, n),
            "imagenet",
            f"He et al. CIFAR ResNet-{d}, option-A shortcuts",
        )
        for d in (8, 20, 32, 44, 56, 110)
    },
}


def build_model(spec: str, num_classes: int) -> nn.Module:
    """Instantiate a zoo model by name or a user model by ``package.module:factory``.

    Raises:
        EdgekitError: unknown name, import failure, or a factory that does not
            return an ``nn.Module``.
    """
    if spec in MODELS:
        return MODELS[spec].factory(num_classes)
    if ":" not in spec:
        raise EdgekitError(
            f"unknown model {spec!r}",
            f"use one of {', '.join(MODELS)} or an import path package.module:factory",
        )
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise EdgekitError(
            f"cannot import model factory {spec!r}: {e}", "check that the module is on PYTHONPATH"
        ) from None
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    model = factory(num_classes=num_classes) if "num_classes" in params else factory()
    if not isinstance(model, nn.Module):
        raise EdgekitError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def model_normalization(spec: str) -> str | None:
    """The normalization a zoo model's public weights were trained with, if known."""
    info = MODELS.get(spec)
    return info.normalization if info else None


# --- checkpoints ----------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)``, with user errors made readable.

    Raises:
        EdgekitError: missing, corrupt, or holding non-tensor objects.
    """
    p = Path(path)
    if not p.is_file():
        raise EdgekitError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgekitError(
            f"cannot read checkpoint {p}: {first}",
            "it must be a state dict saved with torch.save (safe to load with weights_only=True)",
        ) from None
    if not isinstance(obj, dict):
        raise EdgekitError(f"checkpoint {p} holds a {type(obj).__name__}, not a state dict")
    return obj


def extract_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """Find the state dict in common checkpoint layouts and strip ``module.`` prefixes."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` strictly; on a mismatch raise one error naming the keys.

    Raises:
        EdgekitError: missing keys, unexpected keys or shape mismatches.
    """
    own = model.state_dict()
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's step counter; it is unused in eval.
    sd = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **sd}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {list(sd[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    problems = []
    if missing:
        problems.append(f"missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches (checkpoint vs model): {few(shapes)}")
    if problems:
        raise EdgekitError(
            f"checkpoint {source} does not match the model; " + "; ".join(problems),
            "check --model and --num-classes, or that the checkpoint is the one you meant",
        )
    model.load_state_dict(sd, strict=True)


def save_checkpoint(
    path: str | Path, model: nn.Module, spec: str, num_classes: int, force: bool = False, **meta
) -> Path:
    """Save an edgekit checkpoint atomically (loadable with ``weights_only=True``).

    ``meta`` holds plain values (numbers, strings, lists, dicts), e.g. ``classes``,
    ``preprocess``, ``history``. Pruned models also store ``structure``: the
    layer shapes :func:`load_checkpoint` needs to rebuild them.
    """
    from edgekit.fileio import atomic_path

    structure = meta.pop("structure", None)
    if structure is None:
        from edgekit.structure import describe_structure

        structure = describe_structure(model, build_model(spec, num_classes))
    obj = {
        "format": CHECKPOINT_FORMAT,
        "model": spec,
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "structure": structure,
        **meta,
    }
    with atomic_path(path, force=force) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_model(
    spec: str | None, weights: str | Path | None, num_classes: int | None
) -> tuple[nn.Module, dict]:
    """Build a model and load its weights; accepts edgekit and foreign checkpoints.

    Args:
        spec: zoo name or import path, as the user typed it (``--model``); may be
            None for an edgekit checkpoint, which records its own. A checkpoint's
            own ``package.module:factory`` is refused unless the user named it
            (this ``spec``, or earlier in this process: :func:`trust_model`):
            edgekit never imports code named by a file.
        weights: checkpoint path, or None for random initialisation.
        num_classes: class count; taken from an edgekit checkpoint when None.

    Returns:
        ``(model in eval mode, checkpoint metadata dict)``.

    Raises:
        EdgekitError: see :func:`read_checkpoint`, :func:`build_model`,
            :func:`load_state_dict_checked`; malformed metadata
            (:func:`check_checkpoint_meta`); a model factory named only by the
            file; NaN/Inf weights (:func:`check_finite`); a structure whose
            shapes the tensors do not have.
    """
    if spec is not None:
        trust_model(spec)  # the caller's spec is the user's own --model, never a file's
    if weights is None:
        if spec is None or num_classes is None:
            raise EdgekitError("a model name and class count are needed without --weights")
        return build_model(spec, num_classes).eval(), {}
    obj = read_checkpoint(weights)
    meta: dict = {}
    if obj.get("format") == CHECKPOINT_FORMAT:
        check_checkpoint_meta(obj, str(weights))
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        if spec is not None and spec != obj["model"]:
            raise EdgekitError(
                f"{weights} is a checkpoint of {obj['model']!r}, not {spec!r}",
                "drop --model, or pass the matching one",
            )
        if spec is None:
            check_model_trusted(obj["model"], str(weights))
        spec = obj["model"]
        if num_classes is not None and num_classes != obj["num_classes"]:
            raise EdgekitError(f"{weights} has {obj['num_classes']} classes, not {num_classes}")
        num_classes = obj["num_classes"]
    if spec is None:
        raise EdgekitError(f"{weights} is not an edgekit checkpoint", "name the model with --model")
    if num_classes is None:
        raise EdgekitError("the class count is unknown", "pass --num-classes")
    sd = extract_state_dict(obj)
    check_finite(sd, str(weights))
    model = build_model(spec, num_classes)
    if meta.get("structure"):
        from edgekit.structure import apply_structure

        apply_structure(model, meta["structure"], sd, str(weights))
    load_state_dict_checked(model, sd, str(weights))
    return model.eval(), meta


#: The largest class count a checkpoint may record.
MAX_CLASSES = 100_000
#: Environment variable listing ``package.module:factory`` specs the user trusts
#: (comma-separated). :func:`trust_model` adds an explicit ``--model`` to it,
#: so the benchmark's child processes accept checkpoints of that model too.
TRUST_ENV = "EDGEKIT_TRUSTED_MODELS"


def trusted_models() -> set[str]:
    """The user model factories the user named explicitly (``--model`` or ``EDGEKIT_TRUSTED_MODELS``)."""
    return {s.strip() for s in os.environ.get(TRUST_ENV, "").split(",") if s.strip()}


def trust_model(spec: str) -> None:
    """Record that the user named ``spec`` explicitly, so checkpoints naming it may be loaded.

    Only for a spec the user typed (``--model``): never pass a string read from a
    file. Zoo names need no trust. The record is kept in ``EDGEKIT_TRUSTED_MODELS``
    so that processes this one spawns (the isolated benchmark runs) inherit it.
    """
    if spec in MODELS or spec in trusted_models():
        return
    os.environ[TRUST_ENV] = ",".join(sorted(trusted_models() | {spec}))


def check_model_trusted(name: str, where: str) -> None:
    """Refuse a checkpoint's model name unless it is a zoo model or the user named it.

    Raises:
        EdgekitError: ``name`` is a ``package.module:factory`` the user did not pass
            (``--model``, or ``EDGEKIT_TRUSTED_MODELS``).
    """
    if name in MODELS or name in trusted_models():
        return
    raise EdgekitError(
        f"checkpoint {where} names the model factory {name!r}; edgekit never imports code "
        "named by a file",
        f"pass --model {name} yourself if you trust it (export, build, bench, infer; "
        f"or set {TRUST_ENV}={name})",
    )


def check_checkpoint_meta(obj: dict, where: str) -> None:
    """Type- and range-check an edgekit checkpoint's metadata before anything is built.

    ``model`` a string, ``num_classes`` an integer in [1, :data:`MAX_CLASSES`],
    ``state_dict`` a table, ``structure`` layer shapes (:func:`edgekit.structure.check_structure`),
    ``preprocess`` a valid preprocessing record, ``classes`` a list of strings.

    Raises:
        EdgekitError: the first field of the wrong type or out of range, naming the file.
    """
    from edgekit.preprocess import preprocess_schema
    from edgekit.schema import Dict, Int, ListOf, Str, validate

    spec = Dict(
        {
            "model": Str(r"[^\x00]{1,256}", required=True),
            "num_classes": Int(min=1, max=MAX_CLASSES, required=True),
            "state_dict": Dict({}, extra=True, required=True),
            "preprocess": preprocess_schema(nullable=True),
            "classes": ListOf(Str(), max_items=MAX_CLASSES, nullable=True),
        },
        extra=True,
    )
    hint = "the checkpoint is corrupt or was edited; save it again with edgekit"
    validate(obj, spec, where, hint=hint)
    if obj.get("structure"):
        from edgekit.structure import check_structure

        check_structure(obj["structure"], where)


def check_finite(sd: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN or Inf in any floating-point tensor of a state dict.

    Raises:
        EdgekitError: naming the first tensor with a non-finite value.
    """
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise EdgekitError(
                f"checkpoint {where}: tensor {k} holds {bad} NaN/Inf value(s) of {v.numel()}",
                "the training diverged or the file is corrupt; use an earlier checkpoint",
            )
