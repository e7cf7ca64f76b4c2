"""Structured pruning with torch-pruning (DepGraph): channels are removed physically.

Mask-based pruning (``torch.nn.utils.prune``) keeps tensor shapes and so gives no
speed-up; here whole output channels of convolutions are removed together with
every layer that depends on them (BN, the next conv's input channels, residual
partners), found by torch-pruning's dependency graph (Fang et al. 2023,
"DepGraph: Towards Any Structural Pruning", CVPR).

Option-A shortcuts (:class:`edgekit.models.PadShortcut`, He et al. 2016) zero-pad
channels with ``F.pad``, which ties the channels of a whole residual stage in a
way DepGraph does not model. For models that contain them, edgekit prunes only
*inside* blocks: the output channels of each block's first conv (its internal
width), which also shrinks ``bn1`` and the input of ``conv2``. Stage widths (the
residual stream) stay intact. Other models (e.g. torchvision ResNets with
projection shortcuts) are pruned with full DepGraph coupling.

Ratios are *channel* pruning ratios per layer (torch-pruning's ``pruning_ratio``);
``by="macs"`` instead searches the channel ratio (bisection) whose pruned model
removes at least that fraction of MACs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from edgekit.errors import EdgekitError

IMPORTANCES = ("l1", "l2", "bn", "taylor")


@dataclass
class PruneConfig:
    """What to prune and how.

    Attributes:
        ratio: channel pruning ratio in [0, 1) (or MACs reduction with ``by="macs"``).
        per_layer: optional ``{module name: ratio}`` overriding ``ratio`` for those layers.
        global_pruning: rank channels across layers (True) or prune every layer by
            the same ratio (False, "uniform").
        importance: ``l1`` / ``l2`` (group magnitude), ``bn`` (BN scale, Liu et al.
            2017 "Network Slimming"), ``taylor`` (first-order Taylor, Molchanov et
            al. 2019; needs a batch with labels).
        steps: iterative pruning steps (linear schedule to the target).
        round_to: kept channel counts are multiples of this (SIMD/tensor-core friendly).
        ignore: module names never pruned (their outputs); the classifier (last
            ``nn.Linear``) is always added.
        by: ``"channels"`` or ``"macs"``.
        max_layer_ratio: no layer loses more than this fraction (global pruning).
    """

    ratio: float = 0.5
    per_layer: dict[str, float] = field(default_factory=dict)
    global_pruning: bool = False
    importance: str = "l2"
    steps: int = 1
    round_to: int = 8
    ignore: list[str] = field(default_factory=list)
    by: str = "channels"
    max_layer_ratio: float = 0.9

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raises EdgekitError for a ratio outside [0, 1), unknown importance, bad steps."""
        for name, r in [("ratio", self.ratio), *self.per_layer.items()]:
            if not (0.0 <= float(r) < 1.0):
                raise EdgekitError(
                    f"pruning ratio {r} for {name} is outside [0, 1)",
                    "0.5 removes half of the channels; 1.0 would remove a whole layer",
                )
        if self.importance not in IMPORTANCES:
            raise EdgekitError(
                f"unknown importance {self.importance!r}", f"use one of {', '.join(IMPORTANCES)}"
            )
        if not 1 <= self.steps <= 100:
            raise EdgekitError(f"steps must be in [1, 100], got {self.steps}")
        if self.round_to is not None and self.round_to < 1:
            raise EdgekitError(f"round_to must be >= 1, got {self.round_to}")
        if self.by not in ("channels", "macs"):
            raise EdgekitError(f"--by must be 'channels' or 'macs', got {self.by!r}")


def parse_layer_ratios(text: str) -> dict[str, float]:
    """``"layer1.0.conv1=0.5,layer2.0.conv1=0.25"`` -> ``{name: ratio}``.

    Raises:
        EdgekitError: an item that is not ``NAME=RATIO`` with a number.
    """
    out = {}
    for part in (p for p in text.split(",") if p.strip()):
        name, _, r = part.partition("=")
        try:
            out[name.strip()] = float(r)
        except ValueError:
            raise EdgekitError(
                f"--layer-ratio wants NAME=RATIO[,NAME=RATIO], got {part!r}"
            ) from None
    return out


def model_stats(model: nn.Module, example: torch.Tensor) -> dict:
    """Params, MACs (batch of ``example``, via ``tp.utils.count_ops_and_params``) and size.

    Returns:
        ``{"params": int, "macs": int, "size_mb": float}``; size is float32 parameters
        and buffers in MB (1e6 bytes).
    """
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {"params": int(params), "macs": int(macs), "size_mb": nbytes / 1e6}


def _classifier(model: nn.Module) -> list[str]:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _has_option_a(model: nn.Module) -> bool:
    from edgekit.models import PadShortcut

    return any(isinstance(m, PadShortcut) for m in model.modules())


def prunable_layers(model: nn.Module, cfg: PruneConfig) -> list[str]:
    """Names of the layers whose output channels may be pruned under ``cfg``."""
    from edgekit.models import BasicBlockA

    ignore = set(cfg.ignore) | set(_classifier(model))
    if _has_option_a(model):
        inner = {
            f"{n}.conv1" if n else "conv1"
            for n, m in model.named_modules()
            if isinstance(m, BasicBlockA)
        }
        return [n for n in inner if n not in ignore]
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and n not in ignore
    ]


class _ModuleTracker:
    """Forward pre/post hooks keeping the stack of running modules (for error messages)."""

    def __init__(self, model: nn.Module):
        self.stack: list[str] = []
        self.failed: str | None = None
        self.handles = []
        for name, m in model.named_modules():
            if name:
                self.handles.append(m.register_forward_pre_hook(self._pre(name)))
                self.handles.append(m.register_forward_hook(self._post()))

    def _pre(self, name):
        def hook(_m, _i):
            self.stack.append(name)

        return hook

    def _post(self):
        def hook(_m, _i, _o):
            if self.stack:
                self.stack.pop()

        return hook

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.stack:
            self.failed = self.stack[-1]
        for h in self.handles:
            h.remove()
        return False


def _module_error(model: nn.Module, what: str, run: Callable[[], object]):
    """Run ``run()``; turn an exception into an EdgekitError naming the innermost module."""
    tracker = _ModuleTracker(model)
    try:
        with tracker:
            return run()
    except EdgekitError:
        raise
    except Exception as e:
        where = tracker.failed
        mod = (
            f"module {where!r} ({type(model.get_submodule(where)).__name__})"
            if where
            else "the model"
        )
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgekitError(
            f"torch-pruning cannot {what}: {mod} failed: {type(e).__name__}: {first}",
            "the module must be traceable by autograd (no .numpy(), .item() or detach on "
            "activations); add it to --ignore or rewrite its forward",
        ) from None


def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def _kept(c: int, r: float, round_to: int | None) -> int:
    """Channels torch-pruning keeps of ``c`` at ratio ``r`` (its rounding rule)."""
    k = int(c * (1 - r))
    return k - k % round_to if round_to else k


def _check_layers(model: nn.Module, cfg: PruneConfig, names: list[str]) -> None:
    if cfg.global_pruning:
        return
    for n in names:
        m = model.get_submodule(n)
        c = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        r = cfg.per_layer.get(n, cfg.ratio)
        if r > 0 and _kept(c, r, cfg.round_to) <= 0:
            raise EdgekitError(
                f"pruning ratio {r} would remove all {c} output channels of layer {n!r} "
                f"(kept channels are rounded down to multiples of round_to={cfg.round_to})",
                "lower the ratio, lower --round-to, or add the layer to --ignore",
            )


@dataclass
class PruneResult:
    before: dict
    after: dict
    config: dict
    channel_ratio: float
    steps: list[dict]
    #: the fraction of the prunable layers' output channels actually removed: rounding
    #: kept channels down to multiples of ``round_to`` makes it differ from the ratio asked
    effective_channel_ratio: float | None = None

    @property
    def macs_reduction(self) -> float:
        return 1.0 - self.after["macs"] / self.before["macs"]

    def to_dict(self) -> dict:
        return {**asdict(self), "macs_reduction": self.macs_reduction}


def _one_pass(
    model: nn.Module,
    example: torch.Tensor,
    cfg: PruneConfig,
    ratio: float,
    taylor_batch=None,
    finetune: Callable[[nn.Module, int], None] | None = None,
    log=lambda *_: None,
) -> list[dict]:
    """Prune ``model`` in place at channel ratio ``ratio`` in ``cfg.steps`` steps."""
    import torch_pruning as tp

    names = prunable_layers(model, cfg)
    by_name = dict(model.named_modules())
    unknown = [n for n in cfg.per_layer if n not in by_name]
    if unknown:
        raise EdgekitError(
            f"--layer-ratio names unknown layer(s): {', '.join(unknown)}",
            "use module names as in model.named_modules(), e.g. layer1.0.conv1",
        )
    not_prunable = [n for n in cfg.per_layer if n not in names]
    if not_prunable:
        raise EdgekitError(
            f"layer(s) {', '.join(not_prunable)} cannot be pruned here",
            f"prunable layers: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}",
        )
    _check_layers(model, cfg.__class__(**{**cfg.to_dict(), "ratio": ratio}), names)
    keep = set(names)
    ignored = [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and n not in keep
    ]
    model.eval()

    def make():
        return tp.pruner.MetaPruner(
            model,
            example,
            importance=_importance(cfg.importance),
            global_pruning=cfg.global_pruning,
            pruning_ratio=ratio,
            pruning_ratio_dict={by_name[n]: r for n, r in cfg.per_layer.items()} or None,
            max_pruning_ratio=cfg.max_layer_ratio,
            iterative_steps=cfg.steps,
            ignored_layers=ignored,
            round_to=cfg.round_to,
        )

    pruner = _module_error(model, "trace this model", make)
    history = []
    for step in range(cfg.steps):
        if cfg.importance == "taylor":
            if taylor_batch is None:
                raise EdgekitError("Taylor importance needs a batch of labelled images")
            x, y = taylor_batch
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        _module_error(model, "prune this model", pruner.step)
        model.zero_grad(set_to_none=True)
        _module_error(model, "run the pruned model", lambda: model.eval()(example))
        for n in names:
            m = model.get_submodule(n)
            c = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            if c < 1:
                raise EdgekitError(f"pruning removed every channel of layer {n!r}")
        stats = model_stats(model, example)
        history.append({"step": step + 1, **stats})
        log(f"  step {step + 1}/{cfg.steps}: {stats['macs'] / 1e6:.2f} M MACs")
        if finetune is not None and step + 1 < cfg.steps:
            finetune(model, step)
    return history


def search_channel_ratio(
    model: nn.Module, example: torch.Tensor, cfg: PruneConfig, target: float, taylor_batch=None
) -> float:
    """Smallest channel ratio (to 1e-3) whose one-step pruning removes >= ``target`` of MACs.

    Raises:
        EdgekitError: no ratio below ``cfg.max_layer_ratio`` reaches the target.
    """
    base = model_stats(model, example)["macs"]
    one = PruneConfig(**{**cfg.to_dict(), "steps": 1})

    def reduction(r: float) -> float:
        m = copy.deepcopy(model)
        try:
            _one_pass(m, example, one, r, taylor_batch)
        except EdgekitError:
            return float("nan")
        return 1.0 - model_stats(m, example)["macs"] / base

    # torch-pruning's global ranking with round_to is not monotone in the ratio, so scan a
    # grid first, then bisect between the last grid point short of the target and the first
    # one that reaches it.
    top = min(0.95, cfg.max_layer_ratio) if cfg.global_pruning else 0.95
    # fail fast: one pass at the largest ratio tells whether the target is reachable at all
    # (with round_to the cut comes in steps); only then scan and bisect
    most = reduction(_largest_uniform_ratio(model, cfg, top))
    if most == most and most < target:
        raise EdgekitError(
            f"--by macs --ratio {target:g} cannot be reached: at most {most:.1%} of this "
            f"model's MACs can be removed with round_to={cfg.round_to} (reachable: 0 to "
            f"{most:.3f})",
            f"use --ratio {math.floor(most * 100) / 100:g} or less, or --round-to 1",
        )
    grid = [top * i / 16 for i in range(1, 17)]
    lo, hi = 0.0, None
    best_seen = 0.0 if most != most else most
    for r in grid:
        red = reduction(r)
        if red == red:
            best_seen = max(best_seen, red)
        if red >= target:
            hi = r
            break
        lo = r
    if hi is None:
        raise EdgekitError(
            f"no channel ratio removes {target:.0%} of MACs of this model "
            f"(at most {best_seen:.0%} is reachable)",
            "lower the target, or use --round-to 1",
        )
    for _ in range(6):
        mid = (lo + hi) / 2
        if reduction(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def _largest_uniform_ratio(model: nn.Module, cfg: PruneConfig, top: float) -> float:
    """The largest uniform channel ratio (at most ``top``) that leaves every prunable layer
    at least ``round_to`` channels (:func:`_kept`); ``top`` itself for global pruning."""
    if cfg.global_pruning:
        return top
    k = cfg.round_to or 1
    widths = [_channels(model, [n]) for n in prunable_layers(model, cfg) if n not in cfg.per_layer]
    return min([top, *(1.0 - k / c for c in widths if c >= k)])


def prune_model(
    model: nn.Module,
    example: torch.Tensor,
    cfg: PruneConfig,
    taylor_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    finetune: Callable[[nn.Module, int], None] | None = None,
    log=lambda *_: None,
) -> PruneResult:
    """Prune ``model`` in place; returns statistics before and after.

    Args:
        model: the FP32 model (any ``nn.Module`` torch-pruning can trace).
        example: float32 [1, C, H, W] example input (used for tracing and MACs).
        cfg: see :class:`PruneConfig`.
        taylor_batch: ``(x float32 [N,C,H,W], y int64 [N])`` for Taylor importance.
        finetune: called as ``finetune(model, step)`` *between* iterative steps
            (fine-tuning after the last step is the caller's job).

    Raises:
        EdgekitError: invalid config, a layer that would lose all channels, or a
            model torch-pruning cannot trace (the message names the module).
    """
    cfg.validate()
    before = model_stats(model, example)
    ratio = cfg.ratio
    if cfg.by == "macs" and cfg.ratio > 0:
        ratio = search_channel_ratio(model, example, cfg, cfg.ratio, taylor_batch)
        log(f"channel ratio {ratio:.3f} removes >= {cfg.ratio:.0%} of MACs")
    names = prunable_layers(model, cfg)
    channels_before = _channels(model, names)
    steps = _one_pass(model, example, cfg, ratio, taylor_batch, finetune, log)
    after = model_stats(model, example)
    effective = 1.0 - _channels(model, names) / channels_before if channels_before else None
    res = PruneResult(before, after, cfg.to_dict(), ratio, steps, effective)
    if cfg.by == "channels" and effective is not None and abs(effective - ratio) > 0.005:
        log(
            f"effective: {effective:.1%} of the prunable channels removed (asked {ratio:.1%}; "
            f"kept channels are rounded down to multiples of round_to={cfg.round_to}), "
            f"MACs cut by {res.macs_reduction:.1%}"
        )
    elif cfg.by == "macs":
        log(f"effective: MACs cut by {res.macs_reduction:.1%} (asked at least {cfg.ratio:.1%})")
    return res


def _channels(model: nn.Module, names: list[str]) -> int:
    """Output channels (features) of the layers ``names``, summed."""
    total = 0
    for n in names:
        m = model.get_submodule(n)
        total += m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
    return total


def recalibrate_bn(
    model: nn.Module,
    split,
    preprocess,
    images: int = 2048,
    batch: int = 128,
    seed: int = 0,
    augment: tuple[int, bool] | None = None,
) -> int:
    """Re-estimate every BatchNorm's running mean/variance on training images.

    After channels are removed, the layers that lost *input* channels produce
    different activations, so the running statistics of the BatchNorm after them are
    stale; a short fine-tune (momentum 0.1, a few batches) does not wash them out and
    eval-mode top-1 collapses. This is "adaptive BN" (Li et al., EagleEye, ECCV 2020):
    a cumulative average (``momentum=None``) over ``images`` un-augmented training
    images, no gradients, weights unchanged.

    Args:
        split: a :class:`edgekit.data.Split` (uint8 NHWC ``x``).
        preprocess: the model's :class:`edgekit.preprocess.Preprocess`.
        augment: ``(crop padding, hflip)``: estimate on images augmented as in
            training (:func:`edgekit.augment.random_crop_flip`) instead of un-augmented ones.

    Returns:
        the number of images used (0 when the model has no BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(split) == 0:
        return 0
    idx = np.random.default_rng(seed).permutation(len(split))[:images]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    device = next(model.parameters()).device
    from edgekit.augment import random_crop_flip

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            xb = split.x[np.sort(idx[i : i + batch])]
            if augment is not None:  # the training augmentation, the same batched code
                t = random_crop_flip(torch.from_numpy(xb), *augment, gen, layout="NHWC")
                xb = t.numpy()
            x = torch.from_numpy(preprocess.apply(xb))
            model(x.to(device))
    for m, (mom, tr) in zip(bns, saved, strict=True):
        m.momentum = mom
        m.train(tr)
    model.train(was_training)
    return len(idx)


def prune_and_finetune(
    model: nn.Module,
    train_split,
    preprocess,
    cfg: PruneConfig,
    train_cfg=None,
    hflip: bool = True,
    distill: bool = False,
    val_split=None,
    log=lambda *_: None,
    device=None,
) -> tuple[PruneResult, list[dict]]:
    """Prune ``model`` in place and recover accuracy by fine-tuning (optionally with KD).

    After every pruning step the BatchNorm statistics are re-estimated on training
    images (:func:`recalibrate_bn`, adaptive BN), then fine-tuning runs: with
    ``cfg.steps`` > 1, ``train_cfg.epochs`` epochs between steps and after the last one;
    with 1 step, once at the end. After fine-tuning they are re-estimated once more, on
    images augmented as in training: un-augmented images would give statistics the
    fine-tuned weights do not expect (1.8 points of top-1 lost on ResNet-20; augmented
    ones matched the running statistics within 0.1 point; docs/pruning.md).
    ``distill`` uses a frozen copy of the unpruned model as teacher
    (:func:`edgekit.train.kd_loss`). ``train_cfg`` None or ``epochs`` 0 means no
    fine-tuning; ``train_cfg.time_budget_s`` bounds each fine-tuning phase in wall-clock
    seconds (:func:`edgekit.train.fit`).

    Pruning itself (torch-pruning's tracing) runs on the CPU; BN re-estimation and
    fine-tuning run on ``device`` (a ``torch.device`` or ``auto|cpu|cuda|cuda:N``;
    None = CPU) through the same :func:`edgekit.train.fit` and input pipeline as
    ``edgekit train``. The model is returned on the CPU.

    Returns:
        ``(PruneResult, fine-tuning history)``.
    """
    from edgekit.device import resolve_device
    from edgekit.train import TrainConfig, fit

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device or "cpu")
    train_cfg = train_cfg or TrainConfig(epochs=0)
    model.cpu()
    teacher = copy.deepcopy(model).eval() if distill else None
    h, w = preprocess.height, preprocess.width
    example = torch.zeros(1, 3, h, w)
    taylor = None
    if cfg.importance == "taylor":
        n = min(256, len(train_split))
        taylor = (
            torch.from_numpy(preprocess.apply(train_split.x[:n])),
            torch.from_numpy(np.asarray(train_split.y[:n], dtype=np.int64)),
        )
    history: list[dict] = []

    def finetune(m, step):
        m.to(dev)
        # the layers that lost input channels now see other activations: fresh statistics
        n = recalibrate_bn(m, train_split, preprocess, seed=train_cfg.seed)
        if n:
            log(f"  re-estimated BatchNorm statistics on {n} training images")
        if train_cfg.epochs > 0:
            mins = f"{train_cfg.time_budget_s / 60:g} min" if train_cfg.time_budget_s else ""
            what = (
                f"{train_cfg.epochs} epoch(s)" + (f", at most {mins}" if mins else "")
                if train_cfg.epochs < 10**6 or not mins
                else mins
            )
            log(f"  fine-tuning {what} on {dev} after step {step + 1}")
            history.extend(
                fit(
                    m,
                    train_split,
                    preprocess,
                    train_cfg,
                    hflip,
                    val_split,
                    teacher=teacher,
                    device=dev,
                    log=log,
                )
            )
        m.cpu()  # the next pruning step traces with a CPU example

    res = prune_model(model, example, cfg, taylor, finetune, log)
    log(
        f"pruned: params {res.before['params']:,} -> {res.after['params']:,}, MACs "
        f"{res.before['macs'] / 1e6:.2f}M -> {res.after['macs'] / 1e6:.2f}M "
        f"(-{res.macs_reduction:.1%}), size {res.before['size_mb']:.2f} -> "
        f"{res.after['size_mb']:.2f} MB"
    )
    finetune(model, cfg.steps - 1)
    if train_cfg.epochs > 0:
        # a short fine-tune leaves the running statistics behind the weights; estimate them
        # again on images augmented as in training (un-augmented ones cost accuracy)
        model.to(dev)
        recalibrate_bn(
            model,
            train_split,
            preprocess,
            seed=train_cfg.seed,
            augment=(train_cfg.crop_padding, hflip),
        )
        model.cpu()
    model.eval()
    return res, history


FINETUNE_LR = 0.01  # fine-tuning a trained model: a tenth of the training lr


def finetune_config(
    recipe: str | None = None,
    epochs: int | None = None,
    minutes: float | None = None,
    lr: float | None = None,
    **overrides,
):
    """The :class:`edgekit.train.TrainConfig` of pruning's fine-tuning.

    The recipe (:mod:`edgekit.recipes`) gives the optimizer, batch size and schedule;
    the lr is ``lr`` or :data:`FINETUNE_LR` (not the recipe's training lr). ``minutes``
    sets a wall-clock budget per fine-tuning phase (``time_budget_s``); with a budget
    and no ``epochs``, the budget alone decides when to stop.

    Raises:
        EdgekitError: an unknown recipe, negative epochs, a budget <= 0 or above a
            week (NaN, inf), or a value outside :data:`edgekit.recipes.RANGES`.
    """
    from edgekit.train import make_config

    if epochs is not None and epochs < 0:
        raise EdgekitError(f"--finetune-epochs must be >= 0, got {epochs}")
    if minutes is not None and not 0 < minutes <= 7 * 24 * 60:  # NaN and inf too
        raise EdgekitError(
            f"--finetune-minutes must be > 0 and at most a week (10080), got {minutes:g}",
            "e.g. --finetune-minutes 5",
        )
    if epochs is None:
        epochs = 10**6 if minutes else 0
    return make_config(
        recipe,
        epochs=epochs,
        lr=FINETUNE_LR if lr is None else lr,
        time_budget_s=minutes * 60 if minutes else None,
        **overrides,
    )


def check_kd_features(kd_features: float, distill: bool) -> None:
    """Raises EdgekitError for a negative weight, or feature distillation without a teacher."""
    if not 0 <= kd_features <= 1e6:  # NaN too
        raise EdgekitError(f"--kd-features must be in [0, 1e6], got {kd_features}")
    if kd_features > 0 and not distill:
        raise EdgekitError(
            "--kd-features distils block outputs from the unpruned model, which needs --distill",
            "add --distill (or drop --kd-features)",
        )


def prune_checkpoint(
    weights: str,
    out: str,
    dataset: str,
    cfg: PruneConfig,
    *,
    model: str | None = None,
    data_dir: str | None = None,
    finetune_epochs: int | None = 0,
    finetune_minutes: float | None = None,
    lr: float | None = None,
    recipe: str | None = None,
    distill: bool = False,
    kd_features: float = 0.0,
    device: str | None = None,
    force: bool = False,
    log=print,
) -> PruneResult:
    """``edgekit prune``: prune a checkpoint, fine-tune, save an edgekit checkpoint.

    The output stores the pruned layer shapes (:mod:`edgekit.structure`), so it loads
    with ``weights_only=True`` via :func:`edgekit.models.load_model`.

    ``kd_features`` > 0 adds block-output distillation
    (:class:`edgekit.train.FeatureDistill`) to ``distill``'s logits KD. Fine-tuning:
    :func:`finetune_config` (``finetune_epochs``, ``finetune_minutes``, ``lr``,
    ``recipe``) on ``device`` (``auto|cpu|cuda|cuda:N``), which is recorded in the
    checkpoint's metadata (``device``).

    Raises:
        EdgekitError: see :func:`prune_model`; ``out`` exists without ``force``;
            ``kd_features`` without ``distill``; a CUDA device that is not there.
    """
    from edgekit.device import resolve_device
    from edgekit.fileio import check_writable
    from edgekit.train import evaluate

    dev = resolve_device(device)
    check_writable(out, force)
    cfg.validate()
    check_kd_features(kd_features, distill)
    tcfg = finetune_config(recipe, finetune_epochs, finetune_minutes, lr, kd_features=kd_features)
    ds, m, meta, name, pre = load_for_finetune(weights, model, dataset, data_dir)
    res, hist = prune_and_finetune(
        m,
        ds.split("train"),
        pre,
        cfg,
        tcfg,
        ds.hflip,
        distill,
        log=log,
        device=dev,
    )
    top1 = evaluate(m.to(dev), ds.test, pre, device=dev)
    m.cpu()
    tuned = " and fine-tuning" if hist else ""
    log(f"test top-1 after pruning{tuned}: {top1:.2f}%")
    save_finetuned(
        out, m, name, meta, ds, pre, hist, dev, tcfg, force,
        pruning={**res.to_dict(), "test_top1": top1},
    )  # fmt: skip
    return res


def load_for_finetune(weights: str, model: str | None, dataset: str, data_dir: str | None):
    """What ``edgekit prune`` and the compress commands load before changing a checkpoint.

    Returns:
        ``(dataset, model, checkpoint metadata, model name, preprocess)``; the model name
        is the checkpoint's own, else ``model`` (None when neither names one).

    Raises:
        EdgekitError: the dataset or the checkpoint cannot be loaded.
    """
    from edgekit.data import load_dataset
    from edgekit.models import load_model, model_normalization
    from edgekit.preprocess import resolve_preprocess

    ds = load_dataset(dataset, data_dir)
    m, meta = load_model(model, weights, None if meta_has_classes(weights) else ds.num_classes)
    name = meta.get("model", model)
    pre = resolve_preprocess(ds, model_normalization(name), None, meta)
    return ds, m, meta, name, pre


def save_finetuned(out, model, name, meta, ds, pre, history, device, train_cfg, force, **record):
    """Save a pruned or compressed, fine-tuned model as an edgekit checkpoint (atomically),
    with what it came from: classes, preprocessing, dataset, fine-tuning history, device
    and settings, plus ``record`` (``pruning=...`` or ``compression=...``)."""
    from edgekit.device import device_name
    from edgekit.models import save_checkpoint

    save_checkpoint(
        out,
        model,
        name,
        meta.get("num_classes", ds.num_classes),
        force=force,
        classes=list(ds.classes),
        preprocess=pre.to_dict(),
        dataset=ds.name,
        history=history,
        device=device_name(device),
        finetune_config=train_cfg.to_dict(),
        **record,
    )


def meta_has_classes(weights: str) -> bool:
    from edgekit.models import CHECKPOINT_FORMAT, read_checkpoint

    return read_checkpoint(weights).get("format") == CHECKPOINT_FORMAT
