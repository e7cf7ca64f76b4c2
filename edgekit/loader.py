"""Training batches without a per-item DataLoader: the uint8 set indexed as one tensor.

Where the training set lives:

- **CUDA, fits in GPU memory**: one uint8 NCHW tensor on the GPU (CIFAR-10's 50,000
  images are 147 MB), labels too. A batch is an index into it, on the GPU.
- **CUDA, does not fit** (or the copy runs out of memory): pinned host memory. Each
  batch is gathered on the CPU into one of two pinned buffers and copied to the GPU
  with ``non_blocking=True`` on a side CUDA stream, one batch ahead of the one being
  trained on; the training stream waits on the copy's event. The log says so:
  ``training set (147 MB) does not fit in GPU memory (X MB free): kept in pinned host
  memory``.
- **CPU**: a plain uint8 tensor.

Every epoch, a seeded permutation (``torch.randperm`` with a generator seeded by
``seed + epoch``) orders the images; under DistributedDataParallel each rank takes its
shard ``perm[rank::world]`` after padding the permutation to a multiple of ``world``,
as ``torch.utils.data.DistributedSampler`` does. Each batch is then augmented with
:func:`edgekit.augment.random_crop_flip` on the device (generator seeded by
``seed + epoch`` and the rank), converted to float and normalised on the device:
``(x / 255 - mean) / std``, float32 [B, C, H, W] (channels_last on CUDA when asked).

The CUDA paths follow the documented PyTorch API (``torch.cuda.mem_get_info``,
``Tensor.pin_memory``, ``torch.cuda.Stream``/``Event``, ``Tensor.record_stream``); in
this repository's CI they are not run (no GPU), the CPU path is.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from edgekit.augment import random_crop_flip

MiB = 1 << 20


def fits_in_device_memory(nbytes: int, free: int, total: int) -> bool:
    """Whether a resident set of ``nbytes`` leaves enough GPU memory for training.

    The margin kept free is the larger of 2 GiB and a quarter of the device's memory
    (activations, weights, optimizer state, cuDNN workspaces).
    """
    margin = max(2048 * MiB, total // 4)
    return nbytes + margin <= free


class DeviceBatches:
    """Epochs of augmented, normalised training batches on ``device``.

    Args:
        x: uint8 images [N, H, W, C] (numpy or torch), the layout of
            :class:`edgekit.data.Split`.
        y: int labels [N].
        device: a ``torch.device``.
        batch_size: images per batch (the last batch of an epoch may be smaller).
        mean, std: per-channel normalisation (of images scaled to [0, 1]).
        padding, hflip: the augmentation (:func:`edgekit.augment.random_crop_flip`).
        seed: seeds the permutation and the augmentation of every epoch.
        rank, world: this process's shard under DistributedDataParallel.
        channels_last: return batches in ``torch.channels_last`` memory format (CUDA).
        log: callable for the one line that says where the set is kept when not on the
            GPU although the device is CUDA.
    """

    def __init__(
        self,
        x,
        y,
        device,
        batch_size: int,
        mean,
        std,
        padding: int = 4,
        hflip: bool = True,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        channels_last: bool = False,
        log=print,
    ):
        self.device = torch.device(device)
        xt = torch.as_tensor(np.asarray(x)).permute(0, 3, 1, 2)  # view, NCHW
        self.n = xt.shape[0]
        self.batch_size = int(batch_size)
        self.padding, self.hflip, self.seed = padding, hflip, seed
        self.rank, self.world = rank, world
        self.channels_last = channels_last and self.device.type == "cuda"
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)[:, None, None]
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64)).to(self.device)
        self.placement = "cpu"
        if self.device.type != "cuda":
            self.x = xt.contiguous()
            return
        nbytes = xt.numel() * xt.element_size()
        free, total = torch.cuda.mem_get_info(self.device)
        if fits_in_device_memory(nbytes, free, total):
            try:
                self.x = xt.contiguous().to(self.device)
                self.placement = "device"
                return
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                free, _ = torch.cuda.mem_get_info(self.device)
        try:
            self.x = xt.contiguous().pin_memory()
            self.placement = "pinned"
            where = "pinned host memory, batches prefetched on a side CUDA stream"
        except RuntimeError:  # pinning can fail (locked-memory limits): pageable memory
            self.x = xt.contiguous()
            self.placement = "pageable"
            where = "pageable host memory (pinning failed), batches copied per step"
        log(
            f"training set ({nbytes / 1e6:.0f} MB) does not fit in GPU memory "
            f"({free / 1e6:.0f} MB free): kept in {where}"
        )

    def steps_per_epoch(self) -> int:
        per_rank = -(-self.n // self.world)
        return -(-per_rank // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's image indices of ``epoch`` (int64, CPU), DistributedSampler-style."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g)
        if self.world > 1:
            total = -(-self.n // self.world) * self.world
            perm = torch.cat([perm, perm[: total - self.n]])[self.rank : total : self.world]
        return perm

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields ``(x float32 [B, C, H, W] normalised, y int64 [B])`` on the device."""
        perm = self.order(epoch)
        gen = torch.Generator().manual_seed((self.seed + epoch) * 1000003 + self.rank)
        chunks = perm.split(self.batch_size)
        chunks_d = perm.to(self.device).split(self.batch_size)  # one copy per epoch
        if self.placement == "pinned":
            yield from self._pinned(chunks, chunks_d, gen)
            return
        for idx, idx_d in zip(chunks, chunks_d, strict=True):
            # on the GPU when resident; else gathered on the CPU (the copy is a no-op there)
            xb = self.x[idx_d] if self.placement == "device" else self.x[idx].to(self.device)
            yield self._finish(xb, gen), self.y[idx_d]

    def _finish(self, xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb = random_crop_flip(xb, self.padding, self.hflip, gen)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return (xb.float() / 255.0 - self.mean) / self.std

    def _pinned(self, chunks, chunks_d, gen):
        """Double-buffered prefetch: batch k+1 is gathered and copied while k trains."""
        dev = self.device
        side = torch.cuda.Stream(dev)
        shape = (self.batch_size, *self.x.shape[1:])
        bufs = [torch.empty(shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
        copied: list = [None, None]  # the event after the last copy out of each buffer

        def stage(k):
            buf = bufs[k % 2]
            if copied[k % 2] is not None:
                copied[k % 2].synchronize()  # its previous copy has left the buffer
            idx = chunks[k]
            torch.index_select(self.x, 0, idx, out=buf[: len(idx)])
            with torch.cuda.stream(side):
                xd = buf[: len(idx)].to(dev, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(side)
            copied[k % 2] = ev
            return xd, ev

        main = torch.cuda.current_stream(dev)
        nxt = stage(0) if chunks else None
        for k in range(len(chunks)):
            xd, ev = nxt
            if k + 1 < len(chunks):
                nxt = stage(k + 1)
            main.wait_event(ev)
            xd.record_stream(main)  # allocated on the side stream, used on this one
            yield self._finish(xd, gen), self.y[chunks_d[k]]
