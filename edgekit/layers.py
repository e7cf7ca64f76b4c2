"""Small layer classes that edgekit's compression creates and its checkpoints rebuild.

They live in a module of their own, free of any edgekit import, so that
:mod:`edgekit.structure` (which rebuilds them from a checkpoint's plain-data
``structure`` record) needs neither :mod:`edgekit.models` nor :mod:`edgekit.compress`.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankConv2d(nn.Module):
    """A k x k convolution factorized as a rank-``r`` k x k conv followed by a 1 x 1 conv.

    ``reduce``: ``nn.Conv2d(in_channels, rank, k, stride, padding, dilation, bias=False)``;
    ``expand``: ``nn.Conv2d(rank, out_channels, 1, bias=bias)``. Input float [B, C, H, W],
    output float [B, out_channels, H', W'] with the H', W' of the original convolution.
    This is the two-layer form of Zhang et al. 2015 ("Accelerating Very Deep
    Convolutional Networks for Classification and Detection", TPAMI): MACs per output
    position ``rank * (in_channels * k * k + out_channels)`` instead of
    ``out_channels * in_channels * k * k``. :mod:`edgekit.compress.lowrank` fills it from
    a truncated SVD.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.reduce = nn.Conv2d(
            in_channels,
            rank,
            kernel_size,
            stride,
            padding,
            dilation,
            groups=1,
            bias=False,
            padding_mode=padding_mode,
        )
        self.expand = nn.Conv2d(rank, out_channels, 1, bias=bias)

    @property
    def in_channels(self) -> int:
        return self.reduce.in_channels

    @property
    def out_channels(self) -> int:
        return self.expand.out_channels

    @property
    def rank(self) -> int:
        return self.reduce.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))
