"""Batched crop + flip (edgekit.augment): every output is a crop of the zero-padded input.

The property is checked against every possible crop, not against the implementation's
own parameters: for each output image, search the (2p+1)^2 offsets and both flips.
Real CIFAR-10 test images are used when ../shared is present, random ones otherwise
(the reason is printed, so which one ran is never silent).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekit.augment import random_crop_flip

PAD = 4


@pytest.fixture(scope="module")
def images(request) -> torch.Tensor:
    """2,000 uint8 NCHW 32x32 images: real CIFAR-10 test images when available."""
    from tests.conftest import CIFAR_DIR

    path = CIFAR_DIR / "cifar10-test.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            x = z["x"][:2000]
        print("test_augment: real CIFAR-10 test images")
    else:
        print(f"test_augment: {path} missing, random images instead")
        x = np.random.default_rng(0).integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def _match(x: torch.Tensor, out: torch.Tensor, pad: int):
    """Per image: (matches some unflipped crop, matches some flipped crop), bool [N] each."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad,) * 4)
    plain = torch.zeros(n, dtype=torch.bool)
    flipped = torch.zeros(n, dtype=torch.bool)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = xp[:, :, dy : dy + h, dx : dx + w]
            plain |= (crop == out).flatten(1).all(1)
            flipped |= (crop.flip(3) == out).flatten(1).all(1)
    return plain, flipped


def test_every_output_is_a_padded_crop_and_about_half_are_flipped(images):
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, PAD, True, gen)
    assert out.shape == images.shape and out.dtype == torch.uint8
    plain, flipped = _match(images, out, PAD)
    assert bool((plain | flipped).all()), f"{int((~(plain | flipped)).sum())} not a crop"
    # images equal to their own mirror image (if any) are ambiguous: count the others
    only_flipped = flipped & ~plain
    decided = (plain ^ flipped).sum().item()
    assert decided > 1900
    frac = only_flipped.sum().item() / decided
    # Binomial(1900+, 0.5): sd ~ 0.0115, so [0.4, 0.6] is more than 8 sd wide
    assert 0.4 < frac < 0.6, frac
    # offsets cover the range: some crops are at the extreme corners (not all centred)
    assert not torch.equal(out, images)


def test_without_hflip_nothing_is_flipped_and_offsets_cover_the_range(images):
    x = images[:500]
    out = random_crop_flip(x, PAD, False, torch.Generator().manual_seed(1))
    plain, flipped = _match(x, out, PAD)
    assert bool(plain.all())
    assert not bool((flipped & ~plain).any())
    # the border zeros show the offsets: a crop at the top-left corner has 4 zero rows
    xp = F.pad(x, (PAD,) * 4)
    corner = (out == xp[:, :, :32, :32]).flatten(1).all(1)
    centre = (out == x).flatten(1).all(1)
    assert 0 < int(corner.sum()) < 50 and 0 < int(centre.sum()) < 50  # ~1/81 of 500 each


def test_deterministic_for_a_seed_and_layouts_and_dtypes_agree(images):
    x = images[:64]
    a = random_crop_flip(x, PAD, True, torch.Generator().manual_seed(7))
    b = random_crop_flip(x, PAD, True, torch.Generator().manual_seed(7))
    c = random_crop_flip(x, PAD, True, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    nhwc = random_crop_flip(
        x.permute(0, 2, 3, 1).contiguous(), PAD, True, torch.Generator().manual_seed(7), "NHWC"
    )
    assert torch.equal(nhwc.permute(0, 3, 1, 2), a)
    f = random_crop_flip(x.float(), PAD, True, torch.Generator().manual_seed(7))
    assert f.dtype == torch.float32 and torch.equal(f, a.float())


def test_old_name_and_bad_input():
    from edgekit.train import augment

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    assert torch.equal(
        augment(x, 1, True, torch.Generator().manual_seed(3)),
        random_crop_flip(x, 1, True, torch.Generator().manual_seed(3)),
    )
    assert random_crop_flip(x, 0, False) is x
    with pytest.raises(ValueError, match="4-D"):
        random_crop_flip(x[0], 1, True)
    with pytest.raises(ValueError, match="layout"):
        random_crop_flip(x, 1, True, layout="CHW")
