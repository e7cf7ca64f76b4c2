"""Training on uint8 image arrays, with the standard CIFAR recipe, and distillation.

Recipe (defaults, all overridable): SGD, lr 0.1, momentum 0.9, weight decay
5e-4 (Nesterov off), cosine schedule over the epochs, label smoothing 0.1,
batch 128; augmentation RandomCrop(32, padding=4) and horizontal flip (no flip
for digits), as in He et al. 2016 sec. 4.2, batched on the device
(:mod:`edgekit.augment`). ``--recipe cifar-fast`` is the faster, stronger one of
:mod:`edgekit.recipes`.

Knowledge distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge
in a Neural Network"): :func:`kd_loss` mixes the KL divergence between the
teacher's and the student's temperature-softened distributions (times T^2, so
gradients keep their scale) with the cross-entropy on labels.

Feature distillation (``kd_features`` > 0): the student also mimics the teacher's
intermediate outputs (the "hints" of Romero et al. 2015, "FitNets"), here without
adapters, on the layers whose outputs keep their shape after pruning (for the
option-A ResNets, every residual block: edgekit prunes only inside blocks). It is
the SGD form of the feature-map reconstruction that He, Zhang and Sun (ICCV 2017,
"Channel Pruning for Accelerating Very Deep Neural Networks") solve by least
squares, and it recovers a pruned model much faster than logits alone: see
docs/pruning.md. :class:`FeatureDistill` documents the loss.

:func:`train` is the full job behind ``edgekit train``: a seeded train/validation
split held out from the training set (never the test set), a checkpoint every
epoch (``last.pt``) and the best by validation top-1 (``best.pt``), ``--resume``,
on CUDA the training set resident on the GPU (:mod:`edgekit.loader`), channels_last,
bfloat16 autocast and optional ``torch.compile``, rich progress bars, a PNG of loss/accuracy/learning-rate curves, and
DistributedDataParallel when launched with ``torchrun``::

    torchrun --nproc_per_node=4 -m edgekit train --device cuda ...
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import EdgekitError


@dataclass
class TrainConfig:
    """Training settings; :func:`make_config` fills them from a recipe.

    ``nesterov``, ``decay_1d`` (weight decay also on 1-D parameters: BatchNorm weights
    and biases) and ``warmup_epochs`` (linear warm-up of the lr, then cosine) are what
    the ``cifar-fast`` recipe changes. ``compile`` wraps the model in
    ``torch.compile``; ``channels_last`` and ``amp`` (bfloat16 autocast, float16 with a
    GradScaler where bfloat16 is unsupported) apply on CUDA only. ``workers`` is kept for
    old configurations and ignored: batches come from :class:`edgekit.loader.DeviceBatches`.
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    nesterov: bool = False
    decay_1d: bool = True
    warmup_epochs: float = 0.0
    recipe: str = "default"
    compile: bool = False
    channels_last: bool = True
    seed: int = 0
    crop_padding: int = 4
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    kd_features: float = 0.0
    kd_feature_layers: tuple[str, ...] = ()
    time_budget_s: float | None = None
    amp: bool = True
    workers: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def make_config(recipe: str | None = "default", **overrides):
    """A :class:`edgekit.train.TrainConfig` from a named recipe plus explicit values.

    Args:
        recipe: a key of :data:`RECIPES` (None = ``default``).
        overrides: TrainConfig fields; the ones that are None keep the recipe's value.

    Raises:
        EdgekitError: an unknown recipe, or a value outside
            :data:`edgekit.recipes.RANGES`.
    """
    from edgekit.recipes import RECIPES, check_values

    name = recipe or "default"
    if name not in RECIPES:
        raise EdgekitError(f"unknown recipe {name!r}", f"use one of {', '.join(sorted(RECIPES))}")
    values = {**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}}
    check_values(values)
    return TrainConfig(recipe=name, **values)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton et al. 2015 distillation loss (scalar).

    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, with the
    KL averaged over the batch (``reduction="batchmean"``).

    Args:
        student_logits, teacher_logits: float [N, classes].
        target: int64 [N] labels.
        alpha: weight of the distillation term in [0, 1].
        temperature: T > 0.
    """
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    ce = F.cross_entropy(student_logits, target, label_smoothing=label_smoothing)
    return alpha * t * t * kl + (1.0 - alpha) * ce


class FeatureDistill:
    """Student-mimics-teacher loss on intermediate outputs of the same shape.

    ``loss = mean over layers l of ||s_l - t_l||^2 / ||t_l||^2`` (both squared norms
    averaged over elements), a relative squared error so that one weight suits layers
    and models of any activation scale. FitNets' hints (Romero et al. 2015) without the
    adapter regressor, which is not needed when the shapes agree.

    Layers: ``names`` when given (module names as in ``named_modules()``); otherwise
    every direct child of an ``nn.Sequential`` (the residual blocks of a ResNet's
    stages). Only the layers whose output shape is the same in teacher and student on
    the first batch are used.

    Raises:
        EdgekitError: a named layer is missing from either model, or no layer has
            the same output shape in both.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, names=()):
        from edgekit.errors import EdgekitError

        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        if names:
            missing = [n for n in names if n not in s_mods or n not in t_mods]
            if missing:
                raise EdgekitError(
                    f"feature-distillation layer(s) not in both models: {', '.join(missing)}",
                    "use module names as in model.named_modules(), e.g. layer1.0",
                )
            chosen = list(names)
        else:
            chosen = [
                f"{parent}.{child}" if parent else child
                for parent, m in teacher.named_modules()
                if isinstance(m, nn.Sequential)
                for child, _ in m.named_children()
            ]
            chosen = [n for n in chosen if n in s_mods]
        self.s_out: dict[str, torch.Tensor] = {}
        self.t_out: dict[str, torch.Tensor] = {}
        self.layers: list[str] | None = None
        self._hooks = []
        for n in chosen:
            self._hooks.append(s_mods[n].register_forward_hook(self._keep(self.s_out, n)))
            self._hooks.append(t_mods[n].register_forward_hook(self._keep(self.t_out, n)))

    @staticmethod
    def _keep(store, name):
        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                store[name] = out

        return hook

    def loss(self) -> torch.Tensor:
        """The relative squared error of the last forward passes (scalar float32)."""
        if self.layers is None:
            self.layers = [
                n
                for n, t in self.t_out.items()
                if n in self.s_out and self.s_out[n].shape == t.shape
            ]
            if not self.layers:
                from edgekit.errors import EdgekitError

                raise EdgekitError(
                    "feature distillation: no layer has the same output shape in the pruned "
                    "model and the teacher",
                    "pass layer names whose outputs kept their shape, or set kd_features to 0",
                )
        terms = []
        for n in self.layers:
            t = self.t_out[n].float()
            terms.append(F.mse_loss(self.s_out[n].float(), t) / t.pow(2).mean().clamp_min(1e-12))
        self.s_out.clear()
        self.t_out.clear()
        return torch.stack(terms).mean()

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def augment(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding and optional horizontal flip.

    Kept for callers of the old name: it is :func:`edgekit.augment.random_crop_flip`
    (batched, one gather, no per-image loop).

    Args:
        x: uint8 or float [N, C, H, W]; returns the same dtype and shape.
    """
    from edgekit.augment import random_crop_flip

    return random_crop_flip(x, padding, hflip, gen)


def to_input(x_uint8_nhwc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float32 [N, 3, H, W] (same maths as Preprocess)."""
    x = x_uint8_nhwc.permute(0, 3, 1, 2).float() / 255.0
    return (x - mean[None, :, None, None]) / std[None, :, None, None]


@torch.no_grad()
def evaluate(model: nn.Module, split, preprocess, batch: int = 256, device=None) -> float:
    """Top-1 (percent) of ``model`` on a :class:`Split`."""
    model.eval()
    device = device or next(model.parameters()).device
    correct = 0
    for i in range(0, len(split), batch):
        xb = torch.from_numpy(preprocess.apply(split.x[i : i + batch])).to(device)
        correct += int((model(xb).argmax(1).cpu().numpy() == split.y[i : i + batch]).sum())
    return 100.0 * correct / max(1, len(split))


def _compile_failed(e: BaseException):
    from edgekit.errors import EdgekitError

    first = (str(e).strip().splitlines() or [""])[0][:200]
    return EdgekitError(
        f"--compile failed: torch.compile raised {type(e).__name__}: {first}",
        "run without --compile (training is the same, only slower)",
    )


def _amp_dtype(device: torch.device, enabled: bool):
    """bfloat16 on CUDA where supported, else float16 (needs a GradScaler); None = off."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _continue_schedule(opt, sched, steps: int, warm: int, log) -> None:
    """On ``--resume`` with a larger ``--epochs`` (a TOTAL), continue the cosine decay.

    The resumed cosine over the new total would stand higher at the resume step than
    the lr the run had reached, i.e. the lr would jump back up. Instead the lr goes on
    from where it stood, ``f0``, down to 0 over the remaining steps:
    ``f0 * 0.5 * (1 + cos(pi * (s - s0) / (steps - s0)))``. With the same ``--epochs``
    the saved schedule is kept unchanged.
    """
    s0 = int(sched.last_epoch)
    base = sched.base_lrs[0] if sched.base_lrs else 0.0
    if not base or s0 < warm or s0 >= steps:
        return
    from edgekit.recipes import lr_factor

    f0 = opt.param_groups[0]["lr"] / base
    if lr_factor(s0, steps, warm) <= f0 * (1 + 1e-6) + 1e-12:
        return
    span = steps - s0

    def cont(s: int) -> float:
        return f0 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0, s - s0) / span)))

    sched.lr_lambdas = [cont] * len(opt.param_groups)
    msg = f"resume: the cosine schedule continues from lr x{f0:.3g} to 0 over the added epochs"
    if f0 < 0.01:
        msg += (
            " (the run had finished its decay, so little will change; to train further, "
            "start a new run from OUT/best.pt with --weights)"
        )
    log(msg)


def fit(
    model: nn.Module,
    train_split,
    preprocess,
    cfg: TrainConfig,
    hflip: bool = True,
    val_split=None,
    progress=None,
    *,
    teacher: nn.Module | None = None,
    device: str | torch.device | None = None,
    resume: dict | None = None,
    on_epoch_end=None,
    bar=None,
    log=None,
) -> list[dict]:
    """Train ``model`` in place; returns one history dict per epoch.

    Batches come from :class:`edgekit.loader.DeviceBatches`: the uint8 training set
    held on the device (or in pinned host memory when it does not fit), a seeded
    permutation per epoch (sharded per rank under DistributedDataParallel), batched
    crop + flip (:mod:`edgekit.augment`) and normalisation on the device.

    Optimizer: SGD (``cfg.momentum``, ``cfg.nesterov``), weight decay on all
    parameters or, with ``cfg.decay_1d`` False, not on 1-D ones
    (:func:`edgekit.recipes.param_groups`); lr: ``cfg.warmup_epochs`` of linear
    warm-up (at most half of the steps), then cosine to 0
    (:func:`edgekit.recipes.lr_factor`).

    On CUDA: channels_last (``cfg.channels_last``), bfloat16 autocast (float16 with a
    GradScaler where bfloat16 is unsupported) when ``cfg.amp``; the KD teacher runs
    under ``no_grad`` in the same autocast. ``cfg.compile``: ``torch.compile`` the model
    (on any device).

    Args:
        train_split: :class:`edgekit.data.Split` of uint8 images.
        preprocess: :class:`edgekit.preprocess.Preprocess` (its mean/std/scale).
        progress: optional callable ``(epoch, history_entry)``.
        teacher: optional frozen model; the loss becomes :func:`kd_loss` with
            ``cfg.kd_alpha`` and ``cfg.kd_temperature``, plus ``cfg.kd_features`` times
            :class:`FeatureDistill` on ``cfg.kd_feature_layers`` when that weight is > 0.
        device: a ``torch.device`` or ``auto|cpu|cuda|cuda:N``
            (:func:`edgekit.device.resolve_device`); None = CPU.
        resume: a state from ``on_epoch_end`` (``epoch``, ``optimizer``, ``scheduler``,
            ``history``) to continue from.
        on_epoch_end: ``(epoch, entry, state)`` called after every epoch, with the
            state a resume needs (used for checkpoints).
        bar: optional ``(total_steps) -> callable(advance, description)`` progress factory.
        log: optional callable for notes (where the training set is kept).

    Each history entry: ``epoch``, ``loss``, ``train_top1`` (%), ``lr``, ``seconds``
    (since the start), ``images_per_s`` (this epoch), ``device``, and ``val_top1``
    with a ``val_split``.

    With ``cfg.time_budget_s``, the cosine schedule runs over wall-clock time instead of
    steps and training stops when the budget is spent (a CPU-sized fine-tuning budget).

    Raises:
        EdgekitError: a bad device spec or unavailable CUDA device; ``cfg.compile`` and
            ``torch.compile`` failed (the message says to run without ``--compile``).
    """
    from edgekit.device import resolve_device
    from edgekit.loader import DeviceBatches
    from edgekit.recipes import lr_factor, param_groups

    if device is None:
        device = torch.device("cpu")
    elif isinstance(device, str):
        device = resolve_device(device)
    else:
        device = torch.device(device)
    torch.manual_seed(cfg.seed)
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    inner = model.module if ddp else model
    rank, world = 0, 1
    if ddp and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda and cfg.channels_last else torch.preserve_format
    model.to(device, memory_format=fmt) if cuda else model.to(device)
    batches = DeviceBatches(
        train_split.x,
        train_split.y,
        device,
        cfg.batch_size,
        preprocess.mean,
        preprocess.std,
        padding=cfg.crop_padding,
        hflip=hflip,
        seed=cfg.seed,
        rank=rank,
        world=world,
        channels_last=fmt is torch.channels_last,
        log=log or print,
    )
    feats = None
    if teacher is not None:
        teacher.to(device, memory_format=fmt) if cuda else teacher.to(device)
        teacher.eval()
        if cfg.kd_features > 0:
            feats = FeatureDistill(inner, teacher, cfg.kd_feature_layers)
    opt = torch.optim.SGD(
        param_groups(model, cfg.weight_decay, cfg.decay_1d),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )
    per_epoch = batches.steps_per_epoch()
    steps = cfg.epochs * per_epoch
    # a run shorter than twice the warm-up still ends with its cosine decay to 0
    warm = min(int(round(cfg.warmup_epochs * per_epoch)), steps // 2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warm))
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history: list[dict] = []
    start = 0
    if resume:
        opt.load_state_dict(resume["optimizer"])
        st = dict(resume["scheduler"])
        if "lr_lambdas" in st:
            sched.load_state_dict(st)
        else:  # written by CosineAnnealingLR before the recipes: the step count is enough
            sched.last_epoch = int(st["last_epoch"])
        history = list(resume.get("history", []))
        start = int(resume["epoch"])
        if not cfg.time_budget_s:
            _continue_schedule(opt, sched, steps, warm, log or print)
    amp_dtype = _amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    net = model
    if cfg.compile:
        try:
            net = torch.compile(model)
        except Exception as e:  # torch.compile itself refused (e.g. unsupported Python)
            raise _compile_failed(e) from None
    uncompiled_step = cfg.compile  # compilation happens on the first call

    def step(xb, yb):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = net(xb)
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(xb)
                loss = kd_loss(
                    out.float(),
                    t_out.float(),
                    yb,
                    cfg.kd_alpha,
                    cfg.kd_temperature,
                    cfg.label_smoothing,
                )
                if feats is not None:
                    loss = loss + cfg.kd_features * feats.loss()
            else:
                loss = crit(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return out, loss

    try:
        t0 = time.perf_counter()
        out_of_time = False
        advance = bar(steps - start * per_epoch) if bar else None
        gstep = start * per_epoch
        for epoch in range(start, cfg.epochs):
            model.train()
            t_epoch = time.perf_counter()
            tot_loss = torch.zeros((), device=device)
            tot_correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            for xb, yb in batches.epoch(epoch):
                if cfg.time_budget_s:
                    frac = min(1.0, (time.perf_counter() - t0) / cfg.time_budget_s)
                    f = (gstep + 1) / warm if gstep < warm else 0.5 * (1 + math.cos(math.pi * frac))
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr * f
                if uncompiled_step:
                    try:
                        out, loss = step(xb, yb)
                    except (KeyboardInterrupt, torch.OutOfMemoryError):
                        raise
                    except Exception as e:
                        from edgekit.errors import EdgekitError

                        if isinstance(e, EdgekitError):
                            raise
                        raise _compile_failed(e) from None
                    uncompiled_step = False
                else:
                    out, loss = step(xb, yb)
                if not cfg.time_budget_s:
                    sched.step()
                gstep += 1
                # accumulate on the device: no host synchronisation per step
                tot_loss += loss.detach().float() * len(yb)
                tot_correct += (out.argmax(1) == yb).sum()
                seen += len(yb)
                if advance:
                    advance(1, f"epoch {epoch + 1}/{cfg.epochs}")
                if cfg.time_budget_s and time.perf_counter() - t0 >= cfg.time_budget_s:
                    out_of_time = True
                    break
            took = time.perf_counter() - t_epoch
            entry = {
                "epoch": epoch + 1,
                "loss": float(tot_loss) / max(1, seen),
                "train_top1": 100.0 * int(tot_correct) / max(1, seen),
                "lr": opt.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - t0, 1),
                "images_per_s": round(seen / max(took, 1e-9), 1),
                "device": str(device),
            }
            if val_split is not None:
                entry["val_top1"] = evaluate(inner, val_split, preprocess, device=device)
            history.append(entry)
            if progress:
                progress(epoch, entry)
            if on_epoch_end:
                on_epoch_end(
                    epoch,
                    entry,
                    {
                        "epoch": epoch + 1,
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "history": history,
                    },
                )
            if out_of_time:
                break
    finally:
        if feats is not None:
            feats.close()
    model.eval()
    if cuda and fmt is torch.channels_last:
        model.to(memory_format=torch.contiguous_format)  # checkpoints and export as usual
        if teacher is not None:
            teacher.to(memory_format=torch.contiguous_format)
    return history


def split_train_val(split, val_fraction: float, seed: int):
    """Hold out a class-balanced, seeded validation subset of the *training* split.

    Returns:
        ``(train Split, val Split or None)``; ``val_fraction`` 0 gives no validation.
    """
    if val_fraction <= 0:
        return split, None
    from edgekit.errors import EdgekitError

    if not 0 < val_fraction < 1:
        raise EdgekitError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(split.y):
        idx = np.flatnonzero(split.y == c)
        rng.shuffle(idx)
        val_idx.append(idx[: max(1, int(round(len(idx) * val_fraction)))])
    val = np.sort(np.concatenate(val_idx))
    mask = np.ones(len(split), bool)
    mask[val] = False
    return split.subset(np.flatnonzero(mask)), split.subset(val)


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss, top-1 (train/val) and learning rate per epoch, as one PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekit.fileio import atomic_path

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    ax[0].plot(ep, [h["loss"] for h in history])
    ax[0].set_title("training loss")
    ax[1].plot(ep, [h["train_top1"] for h in history], label="train")
    if any("val_top1" in h for h in history):
        ax[1].plot(ep, [h.get("val_top1", np.nan) for h in history], label="validation")
    ax[1].set_title("top-1 (%)")
    ax[1].legend()
    ax[2].plot(ep, [h["lr"] for h in history])
    ax[2].set_title("learning rate")
    for a in ax:
        a.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _rich_bar(enabled: bool):
    if not enabled:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), transient=True
    )

    def factory(total):
        task = prog.add_task("training", total=total)

        def advance(n, desc):
            prog.update(task, advance=n, description=desc)

        return advance

    return prog, factory


def train(
    model_spec: str,
    dataset: str,
    out_dir: Path,
    cfg: TrainConfig,
    *,
    data_dir: str | None = None,
    weights: str | None = None,
    val_fraction: float = 0.1,
    device: str | None = None,
    resume: bool = False,
    normalization: str | None = None,
    teacher_weights: str | None = None,
    force: bool = False,
    log=print,
) -> dict:
    """``edgekit train``: train a model, keep ``best.pt``/``last.pt``/``curves.png`` in ``out_dir``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
    DistributedDataParallel (NCCL on CUDA, Gloo on CPU); rank 0 writes the files.

    ``device``: ``auto|cpu|cuda|cuda:N`` (:func:`edgekit.device.resolve_device`); it is
    recorded in both checkpoints' metadata (``device``) and in every history entry.

    Returns:
        ``{"best": path, "best_val_top1": float, "test_top1": float, "history": [...],
        "device": str}``.

    Raises:
        EdgekitError: bad dataset/model, an existing ``out_dir`` without ``--force``
            or ``--resume``, a missing checkpoint to resume from, a CUDA device that is
            not there, ``cfg.compile`` where ``torch.compile`` fails.
    """
    from edgekit.data import load_dataset
    from edgekit.errors import EdgekitError
    from edgekit.models import load_model, model_normalization, read_checkpoint, save_checkpoint
    from edgekit.preprocess import resolve_preprocess

    quiet = log is None
    log = log or (lambda *_: None)
    out_dir = Path(out_dir)
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    if resume and not last.is_file():
        raise EdgekitError(f"nothing to resume: {last} does not exist")
    if not resume and not force and (last.exists() or best.exists()):
        raise EdgekitError(
            f"{out_dir} already holds checkpoints", "pass --resume to continue or --force"
        )
    from edgekit.device import device_name, resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
    log(f"training on {device_name(dev)} ({cfg.recipe} recipe)")
    ds = load_dataset(dataset, data_dir)
    if ds.train is None:
        raise EdgekitError(f"dataset {dataset} has no training split")
    src = str(last) if resume else weights
    if resume and model_spec:
        from edgekit.models import trust_model

        trust_model(model_spec)  # the user's own --model may name the resumed checkpoint's factory
    model, meta = load_model(
        None if resume else model_spec, src, None if resume else ds.num_classes
    )
    model_name = meta.get("model", model_spec)
    pre = resolve_preprocess(ds, model_normalization(model_name), normalization, meta)
    train_split, val_split = split_train_val(ds.train, val_fraction, cfg.seed)
    teacher = None
    if teacher_weights:
        teacher, _ = load_model(None, teacher_weights, ds.num_classes)
    state = None
    best_val = -1.0
    if resume:
        obj = read_checkpoint(last)
        state = obj.get("resume")
        best_val = float(obj.get("best_val_top1", -1.0))
        log(f"resuming from {last} at epoch {state['epoch']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    net: nn.Module = model.to(dev)
    if dev.type == "cuda" and cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)  # before DDP builds its buckets
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    common = {
        "classes": list(ds.classes),
        "preprocess": pre.to_dict(),
        "dataset": ds.name,
        "train_config": cfg.to_dict(),
        "device": device_name(dev),
        "world_size": world,
    }

    def on_epoch_end(epoch, entry, st):
        nonlocal best_val
        if rank != 0:
            return
        val = entry.get("val_top1", entry["train_top1"])
        improved = val > best_val
        best_val = max(best_val, val)
        ckpt_meta = {**common, "history": st["history"], "best_val_top1": best_val}
        save_checkpoint(
            last,
            model,
            model_name,
            ds.num_classes,
            force=True,
            resume={k: st[k] for k in ("epoch", "optimizer", "scheduler")},
            **ckpt_meta,
        )
        if improved:
            save_checkpoint(best, model, model_name, ds.num_classes, force=True, **ckpt_meta)
        plot_curves(st["history"], out_dir / "curves.png")
        log(
            f"epoch {entry['epoch']}/{cfg.epochs}: loss {entry['loss']:.3f}, train top-1 "
            f"{entry['train_top1']:.1f}%"
            + (f", val top-1 {entry['val_top1']:.2f}%" if "val_top1" in entry else "")
            + f", lr {entry['lr']:.4f}"
            + (" (best)" if improved else "")
        )

    if state:
        state = {**state, "history": read_checkpoint(last).get("history", [])}
    prog, factory = _rich_bar(rank == 0 and not quiet)
    if prog:
        prog.start()
    try:
        history = fit(
            net,
            train_split,
            pre,
            cfg,
            hflip=ds.hflip,
            val_split=val_split,
            teacher=teacher,
            device=dev,
            resume=state,
            on_epoch_end=on_epoch_end,
            bar=factory,
            log=log,
        )
    finally:
        if prog:
            prog.stop()
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    best_model, _ = load_model(None, best, None)
    test_top1 = evaluate(best_model, ds.test, pre)
    log(f"best {best} (val top-1 {best_val:.2f}%): test top-1 {test_top1:.2f}%")
    return {
        "best": str(best),
        "best_val_top1": best_val,
        "test_top1": test_top1,
        "history": history,
        "device": device_name(dev),
    }
