"""Batched random crop with zero padding and horizontal flip: one gather, no Python loop.

The CIFAR augmentation of He et al. 2016 (sec. 4.2): pad 4 pixels of zeros on each
side, take a random 32x32 crop, flip horizontally with probability 1/2. Done for a
whole batch with tensor ops, so it runs on the device that holds the batch (CPU or
GPU) with the same code:

1. write the batch, followed by the mirror images of the K images to be flipped, into
   one zero-padded source ``src`` of shape [N + K, C, H + 2p, W + 2p];
2. per image, draw a row offset ``dy``, a column offset ``dx`` in ``[0, 2p]`` and a flip
   bit; a flipped crop at ``dx`` is the crop of the mirrored padded image at ``2p - dx``;
3. view ``src`` as overlapping rows of W elements, one starting at every element
   (``as_strided``, no copy), and take the N*C*H rows of all crops with ONE
   ``index_select``: row (n, c, y) starts at ``src[img_n, c, dy_n + y, dx_n]``, where
   ``img_n`` is n or the index of n's mirror image.

Gathering whole rows (runs of W elements) instead of single pixels is what makes it
fast on a CPU: ``benchmarks/augment_speed.py`` measures it against the per-image loop
it replaced.

The random numbers are drawn on the CPU from a seeded ``torch.Generator`` (3N numbers
per batch, moved to the batch's device), so a seed gives the same crops on CPU and GPU.
"""

from __future__ import annotations

import torch


def crop_flip_params(
    n: int, padding: int, hflip: bool, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of :func:`random_crop_flip` for ``n`` images.

    Returns:
        ``(dy, dx, flip)``: int64 [n] offsets into the padded image, each uniform in
        ``[0, 2 * padding]``, and bool [n] flips (each True with probability 1/2; all
        False without ``hflip``). All on the CPU. Drawn in this order from ``gen``.
    """
    if padding:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    else:
        dy = dx = torch.zeros(n, dtype=torch.int64)
    flip = torch.rand(n, generator=gen) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flip


def random_crop_flip(
    x: torch.Tensor,
    padding: int,
    hflip: bool,
    gen: torch.Generator | None = None,
    layout: str = "NCHW",
) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding and optional horizontal flip, batched.

    Args:
        x: a batch of images, uint8 or float, [N, C, H, W] (``layout="NCHW"``) or
            [N, H, W, C] (``layout="NHWC"``), on any device.
        padding: zero pixels added on each side before cropping (4 for CIFAR); 0 = no crop.
        hflip: flip each image horizontally with probability 1/2.
        gen: a CPU ``torch.Generator`` (seeded for reproducibility); None = torch's global one.
        layout: ``"NCHW"`` or ``"NHWC"``.

    Returns:
        a new tensor of the same shape, dtype, layout and device: image ``i`` is
        ``pad(x)[i]`` cropped at rows ``dy[i] .. dy[i]+H-1`` and columns
        ``dx[i] .. dx[i]+W-1`` (offsets in ``[0, 2 * padding]``), reversed along the width
        when flipped. With neither padding nor hflip, ``x`` itself.

    Raises:
        ValueError: ``x`` is not 4-D, an unknown layout, or a negative padding.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D batch, got shape {tuple(x.shape)}")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not padding and not hflip:
        return x
    nhwc = layout == "NHWC"
    xc = x.permute(0, 3, 1, 2) if nhwc else x  # a view: NCHW indexing from here on
    n, c, h, w = xc.shape
    dy, dx, flip = crop_flip_params(n, padding, hflip, gen)
    p = padding
    hp, wp = h + 2 * p, w + 2 * p
    # the K flipped images get a mirrored copy after the batch; image i's source is itself
    # or its mirror, cropped at 2p - dx. Worked out on the CPU (no device synchronisation
    # for nonzero), then 4 small index tensors go to the device.
    fi = flip.nonzero().squeeze(1)
    img = torch.where(flip, n + flip.long().cumsum(0) - 1, torch.arange(n))
    dx = torch.where(flip, 2 * p - dx, dx)
    dev = x.device
    dy, dx, img, fi = dy.to(dev), dx.to(dev), img.to(dev), fi.to(dev)
    src = xc.new_zeros((n + fi.numel(), c, hp, wp))
    src[:n, :, p : p + h, p : p + w] = xc
    if fi.numel():
        src[n:, :, p : p + h, p : p + w] = xc.index_select(0, fi).flip(3)
    # the row (n, c, y) of the output starts at this element of src
    start = ((img[:, None] * c + torch.arange(c, device=dev)) * (hp * wp))[:, :, None] + (
        (dy[:, None] + torch.arange(h, device=dev)) * wp + dx[:, None]
    )[:, None, :]  # [N, C, H]
    rows = src.as_strided((src.numel() - w + 1, w), (1, 1))  # overlapping, read-only
    out = rows.index_select(0, start.view(-1)).view(n, c, h, w)
    return out.permute(0, 2, 3, 1).contiguous() if nhwc else out
