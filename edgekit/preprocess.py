"""Evaluation preprocessing, in NumPy only, recorded in every artifact's manifest.

The same function prepares calibration batches, accuracy passes and
``edgekit infer`` inputs, on the build host and on the device, so they cannot
drift apart (a mismatch between calibration and evaluation preprocessing is the
classic cause of INT8 accuracy loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edgekit.errors import EdgekitError

#: Largest accepted image side in pixels (an 8192x8192 float32 RGB input is 805 MB).
MAX_SIDE = 8192

#: Named normalizations (mean, std) for RGB in [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def preprocess_schema(**kw):
    """The :mod:`edgekit.schema` spec of a ``preprocess`` record (manifests, checkpoints).

    Sizes are integers in [1, :data:`MAX_SIDE`]; ``mean`` and ``std`` are 3 finite
    numbers with ``std > 0``; ``scale > 0``; ``channel_order`` RGB or BGR; layout NCHW.
    ``kw`` goes to the outer :class:`edgekit.schema.Field` (e.g. ``required=True``).
    """
    from edgekit.schema import Choice, Dict, Int, ListOf, Num

    return Dict(
        {
            "height": Int(min=1, max=MAX_SIDE, required=True),
            "width": Int(min=1, max=MAX_SIDE, required=True),
            "mean": ListOf(Num(min=-1e6, max=1e6), length=3, required=True),
            "std": ListOf(Num(min=0, max=1e6, exclusive_min=True), length=3, required=True),
            "scale": Num(min=0, max=1e6, exclusive_min=True, required=True),
            "channel_order": Choice("RGB", "BGR"),
            "layout": Choice("NCHW"),
        },
        **kw,
    )


@dataclass(frozen=True)
class Preprocess:
    """uint8 NHWC images -> float32 NCHW tensors: ``(x * scale - mean) / std``.

    Attributes:
        height, width: the model's input size in pixels. Inputs of another size
            are rejected by :meth:`apply` (resizing is the caller's decision).
        mean, std: per-channel, in the scaled range (RGB order).
        scale: multiplies the uint8 values first (1/255 maps to [0, 1]).
        channel_order: ``"RGB"`` (the order of ``mean``/``std`` and of the model input).
        layout: ``"NCHW"``, the model input layout.
    """

    height: int = 32
    width: int = 32
    mean: tuple[float, float, float] = NORMALIZATIONS["imagenet"][0]
    std: tuple[float, float, float] = NORMALIZATIONS["imagenet"][1]
    scale: float = 1.0 / 255.0
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "preprocessing record") -> Preprocess:
        """Build from a manifest's (or a checkpoint's) ``preprocess`` entry.

        Args:
            where: the source, named first in errors (a manifest or checkpoint path).

        Raises:
            EdgekitError: a field is missing or of the wrong kind; a size that is
                not a positive integer; mean/std not 3 finite numbers; a std or
                scale <= 0 (a division by zero would give inf/NaN inputs); an
                unknown channel order or layout.
        """
        from edgekit.schema import validate

        validate(
            d, preprocess_schema(), where, hint="rebuild the artifact with this edgekit version"
        )
        return cls(
            height=d["height"],
            width=d["width"],
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            scale=float(d["scale"]),
            channel_order=d.get("channel_order", "RGB"),
            layout=d.get("layout", "NCHW"),
        )

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Map images to model inputs.

        Args:
            x: uint8 [N, H, W, 3] (RGB) or [H, W, 3].

        Returns:
            float32 [N, 3, H, W], C-contiguous.

        Raises:
            EdgekitError: wrong rank, channel count or size.
        """
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise EdgekitError(
                f"expected images of shape [N, H, W, 3] (RGB, channels last), got {list(x.shape)}"
            )
        if x.shape[1:3] != (self.height, self.width):
            raise EdgekitError(
                f"images are {x.shape[1]}x{x.shape[2]} but the model takes "
                f"{self.height}x{self.width}",
                "resize them first",
            )
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        out = (x.astype(np.float32) * np.float32(self.scale) - mean) / std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def parse_normalization(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Parse ``"cifar10"``/``"imagenet"``/... or ``"m1,m2,m3/s1,s2,s3"``.

    Raises:
        EdgekitError: unknown name or malformed numbers.
    """
    if spec in NORMALIZATIONS:
        return NORMALIZATIONS[spec]
    try:
        m, s = spec.split("/")
        mean = tuple(float(v) for v in m.split(","))
        std = tuple(float(v) for v in s.split(","))
    except ValueError:
        mean = std = ()
    finite = all(math.isfinite(v) and abs(v) <= 1e6 for v in (*mean, *std))  # no nan, inf
    if len(mean) != 3 or len(std) != 3 or not finite or min(std) <= 0:
        raise EdgekitError(
            f"unknown normalization {spec!r}",
            f"use one of {', '.join(NORMALIZATIONS)} or 'm1,m2,m3/s1,s2,s3' (finite, std > 0)",
        )
    return mean, std


def resolve_preprocess(
    dataset, model_norm, override: str | None, ckpt_meta: dict | None
) -> Preprocess:
    """The preprocessing of a model: ``--norm`` > the checkpoint's > the model's > the dataset's.

    Args:
        dataset: an :class:`edgekit.data.Dataset` (its ``image_size`` (H, W) in pixels
            and ``normalization``, a name or a ``(mean, std)`` pair).
        model_norm: the normalization the model's public weights were trained with
            (:func:`edgekit.models.model_normalization`), or None.
        override: the user's ``--norm`` (see :func:`parse_normalization`), or None.
        ckpt_meta: an edgekit checkpoint's metadata; its ``preprocess`` record wins
            over the model's and the dataset's defaults.

    Raises:
        EdgekitError: a malformed ``--norm`` or checkpoint record.
    """
    h, w = dataset.image_size
    if override:
        mean, std = parse_normalization(override)
        return Preprocess(h, w, mean, std)
    if ckpt_meta and ckpt_meta.get("preprocess"):
        return Preprocess.from_dict(ckpt_meta["preprocess"])
    norm = model_norm or dataset.normalization
    mean, std = parse_normalization(norm) if isinstance(norm, str) else norm
    return Preprocess(h, w, tuple(mean), tuple(std))
