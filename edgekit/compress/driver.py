"""One driver for every technique in :mod:`edgekit.compress`: apply, fine-tune, save."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from edgekit.errors import EdgekitError


def compress_model(
    model: nn.Module,
    technique: str,
    level: float,
    train_split,
    preprocess,
    *,
    options: dict | None = None,
    train_cfg=None,
    hflip: bool = True,
    distill: bool = False,
    device=None,
    log=lambda *_: None,
) -> tuple[dict, list[dict]]:
    """Compress ``model`` in place with ``technique`` and fine-tune it.

    Steps: :meth:`~edgekit.compress.base.Technique.apply` on the CPU; BatchNorm
    statistics re-estimated on training images (:func:`edgekit.prune.recalibrate_bn`);
    fine-tuning by :func:`edgekit.train.fit` with ``train_cfg`` (None or 0 epochs: none),
    with logits KD from a frozen copy of the uncompressed model when ``distill``
    (Hinton et al. 2015, :func:`edgekit.train.kd_loss`); statistics re-estimated on
    augmented images after fine-tuning (as :func:`edgekit.prune.prune_and_finetune`
    does); then :meth:`~edgekit.compress.base.Technique.finalize`. The model is
    returned on the CPU in eval mode.

    Returns:
        ``(record, history)``: the technique's record, with ``technique``, ``level``,
        ``before``/``after`` (params, MACs, float32 size in MB; from
        :func:`edgekit.prune.model_stats`), and the fine-tuning history.

    Raises:
        EdgekitError: from the technique's ``check``/``apply``.
    """
    from edgekit.compress import get_technique
    from edgekit.device import resolve_device
    from edgekit.prune import model_stats, recalibrate_bn
    from edgekit.train import TrainConfig, fit

    tech = get_technique(technique)
    options = dict(options or {})
    tech.check(level, options)
    dev = resolve_device(device) if isinstance(device, str | None) else torch.device(device)
    train_cfg = train_cfg or TrainConfig(epochs=0)
    model.cpu().eval()
    example = torch.zeros(1, 3, preprocess.height, preprocess.width)
    teacher = copy.deepcopy(model).eval() if distill else None
    before = model_stats(model, example)
    probe = technique_input(tech, options, train_split, preprocess, train_cfg.seed)
    record = tech.apply(model, probe, level, options, log)
    model.to(dev)
    n = recalibrate_bn(model, train_split, preprocess, seed=train_cfg.seed)
    if n:
        log(f"  re-estimated BatchNorm statistics on {n} training images")
    history: list[dict] = []
    if train_cfg.epochs > 0:
        log(f"  fine-tuning on {dev}")
        history = fit(
            model, train_split, preprocess, train_cfg, hflip, teacher=teacher, device=dev, log=log
        )
        recalibrate_bn(
            model,
            train_split,
            preprocess,
            seed=train_cfg.seed,
            augment=(train_cfg.crop_padding, hflip),
        )
    model.cpu()
    record.update(tech.finalize(model))
    model.eval()
    after = model_stats(model, example)
    record = {"technique": technique, "level": level, **record, "before": before, "after": after}
    return record, history


def technique_input(tech, options: dict, split, preprocess, seed: int = 0) -> torch.Tensor:
    """What :func:`compress_model` passes to ``tech.apply`` as ``example``: float32
    [1, C, H, W] zeros, or, when the technique asks for ``calibration_images(options)`` = n
    > 0, n training images from ``split`` (drawn with ``seed``, un-augmented, at most the
    split's size) preprocessed to float32 [n, C, H, W]."""
    import numpy as np

    n = getattr(tech, "calibration_images", lambda _o: 0)(options)
    if not n:
        return torch.zeros(1, 3, preprocess.height, preprocess.width)
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return torch.from_numpy(preprocess.apply(split.x[idx]))


def compress_checkpoint(
    technique: str,
    level: float,
    weights: str,
    out: str | Path,
    dataset: str,
    *,
    options: dict | None = None,
    model: str | None = None,
    data_dir: str | None = None,
    finetune_epochs: int | None = 0,
    finetune_minutes: float | None = None,
    lr: float | None = None,
    recipe: str | None = None,
    distill: bool = False,
    device: str | None = None,
    force: bool = False,
    log=print,
) -> dict:
    """Compress a checkpoint with ``technique``, fine-tune, save an edgekit checkpoint.

    The output loads with ``weights_only=True`` via :func:`edgekit.models.load_model`
    (its metadata ``compression`` holds the record of :func:`compress_model` and the
    test top-1). Fine-tuning options as for ``edgekit prune``
    (:func:`edgekit.prune.finetune_config`).

    Returns:
        The record, with ``test_top1`` (percent, on the dataset's test split).

    Raises:
        EdgekitError: ``out`` exists without ``force``; bad fine-tuning options; from
            the technique; a CUDA device that is not there. All before fine-tuning.
    """
    from edgekit.compress import get_technique
    from edgekit.device import resolve_device
    from edgekit.fileio import check_writable
    from edgekit.prune import finetune_config, load_for_finetune, save_finetuned
    from edgekit.train import evaluate

    get_technique(technique).check(level, dict(options or {}))
    dev = resolve_device(device)
    check_writable(out, force)
    tcfg = finetune_config(recipe, finetune_epochs, finetune_minutes, lr)
    ds, m, meta, name, pre = load_for_finetune(weights, model, dataset, data_dir)
    if name is None:
        raise EdgekitError("the checkpoint does not name its model", "pass --model")
    record, hist = compress_model(
        m,
        technique,
        level,
        ds.split("train"),
        pre,
        options=options,
        train_cfg=tcfg,
        hflip=ds.hflip,
        distill=distill,
        device=dev,
        log=log,
    )
    top1 = evaluate(m.to(dev), ds.test, pre, device=dev)
    m.cpu()
    log(f"test top-1 after {technique}: {top1:.2f}%")
    record["test_top1"] = top1
    save_finetuned(out, m, name, meta, ds, pre, hist, dev, tcfg, force, compression=record)
    return record
