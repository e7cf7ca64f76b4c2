"""The protocol every compression technique implements (see :mod:`edgekit.compress`)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Technique(Protocol):
    """One compression technique, applied to a trained model before fine-tuning.

    The driver calls, in order: :meth:`check` (before any heavy work), :meth:`apply`
    (in place, on the CPU), then fine-tunes the model with
    :func:`edgekit.train.fit` (masks, codebooks and other constraints must therefore
    live in the model itself, e.g. as ``torch.nn.utils.parametrize`` parametrizations
    or ``torch.nn.utils.prune`` re-parametrizations, so that plain SGD keeps them), then
    :meth:`finalize`, which leaves plain ``nn.Conv2d``/``nn.Linear``/... weights that
    export to ONNX and save in a ``weights_only`` checkpoint.
    """

    #: registry name, e.g. ``"lowrank"``
    name: str
    #: what ``level`` means for this technique, for help texts and reports,
    #: e.g. ``"fraction of MACs removed"`` or ``"sparsity"``
    level_doc: str

    def check(self, level: float, options: dict) -> None:
        """Validate ``level`` and ``options``.

        Raises:
            EdgekitError: a level or option out of range, with how to fix it.
        """

    def apply(
        self, model: nn.Module, example: torch.Tensor, level: float, options: dict, log
    ) -> dict:
        """Compress ``model`` in place; ``example`` is a float32 [1, C, H, W] input, or
        [B, C, H, W] preprocessed training images when the technique defines
        ``calibration_images(options) -> B`` (an optional method: a technique that fits
        on data, such as ``lowrank`` with ``method = "responses"``, asks for B images;
        the driver draws them, un-augmented, from the training split).

        Returns:
            A JSON-able record of what was done (recorded in the checkpoint's
            ``compression`` metadata and the manifest).

        Raises:
            EdgekitError: the model has nothing this technique can compress, or a
                layer it cannot take (naming the layer).
        """

    def finalize(self, model: nn.Module) -> dict:
        """After fine-tuning: strip parametrizations in place; return measured facts
        (e.g. the sparsity reached) to add to the record."""


def run_hooked(
    model: nn.Module, example: torch.Tensor, hooks: list, batch: int | None = None
) -> None:
    """Forward ``example`` through ``model`` without gradients (in slices of ``batch``
    along dim 0 when given), for the forward hooks ``hooks``
    (``torch.utils.hooks.RemovableHandle``) to observe; they are removed afterwards, also
    when a pass raises."""
    step = batch or max(1, len(example))
    try:
        with torch.no_grad():
            for i in range(0, len(example), step):
                model(example[i : i + step])
    finally:
        for h in hooks:
            h.remove()
