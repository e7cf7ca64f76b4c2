"""Training on uint8 image arrays, with the standard CIFAR recipe.

Recipe (defaults, all overridable): SGD, lr 0.1, momentum 0.9, weight decay
5e-4 (Nesterov off), cosine schedule over the epochs, label smoothing 0.1,
batch 128; augmentation RandomCrop(32, padding=4) and horizontal flip (no flip
for digits), as in He et al. 2016 sec. 4.2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    crop_padding: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def augment(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding and optional horizontal flip.

    Args:
        x: uint8 or float [N, C, H, W]; returns the same dtype and shape.
    """
    n, _, h, w = x.shape
    if padding:
        xp = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        x = torch.stack([xp[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def to_input(x_uint8_nhwc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float32 [N, 3, H, W] (same maths as Preprocess)."""
    x = x_uint8_nhwc.permute(0, 3, 1, 2).float() / 255.0
    return (x - mean[None, :, None, None]) / std[None, :, None, None]


@torch.no_grad()
def evaluate(model: nn.Module, split, preprocess, batch: int = 256) -> float:
    """Top-1 (percent) of ``model`` on a :class:`Split`."""
    model.eval()
    correct = 0
    for i in range(0, len(split), batch):
        xb = torch.from_numpy(preprocess.apply(split.x[i : i + batch]))
        correct += int((model(xb).argmax(1).numpy() == split.y[i : i + batch]).sum())
    return 100.0 * correct / max(1, len(split))


def fit(
    model: nn.Module,
    train_split,
    preprocess,
    cfg: TrainConfig,
    hflip: bool = True,
    val_split=None,
    progress=None,
) -> list[dict]:
    """Train ``model`` in place on the CPU; returns one history dict per epoch.

    Args:
        train_split: :class:`edgekit.data.Split` of uint8 images.
        preprocess: :class:`edgekit.preprocess.Preprocess` (its mean/std/scale).
        progress: optional callable ``(epoch, history_entry)``.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    mean = torch.tensor(preprocess.mean)
    std = torch.tensor(preprocess.std)
    x_all = torch.from_numpy(train_split.x).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    y_all = torch.from_numpy(train_split.y)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    steps = cfg.epochs * int(np.ceil(len(y_all) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(y_all), generator=gen)
        tot_loss, tot_correct = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = augment(x_all[idx], cfg.crop_padding, hflip, gen)
            xb = (xb.float() / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
            yb = y_all[idx]
            out = model(xb)
            loss = crit(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
            tot_correct += int((out.argmax(1) == yb).sum())
        entry = {
            "epoch": epoch + 1,
            "loss": tot_loss / len(y_all),
            "train_top1": 100.0 * tot_correct / len(y_all),
            "lr": sched.get_last_lr()[0],
        }
        if val_split is not None:
            entry["val_top1"] = evaluate(model, val_split, preprocess)
        history.append(entry)
        if progress:
            progress(epoch, entry)
    model.eval()
    return history
