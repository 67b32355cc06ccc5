"""In-memory image datasets held as their decoded uint8 pixels and normalised per batch.

A normalised float32 copy of a decoded image set is four times its uint8 pixels: Tiny-ImageNet's
training set is 4.9 GB against 1.2 GB, CIFAR's 600 MB against 150 MB. Every process holds one
(every rank of a multi-process run holds the whole set: its part of a batch is cut from the
whole epoch order), and a bundle moved to a GPU holds it there. ``Uint8Images`` keeps the uint8
pixels (on the training device once ``DataBundle.to`` moved them) and turns each batch into
float32 where it lives, a quarter of the bytes to index and to copy.

The float32 batch is bit-identical to what the float path held: a channel's pixel takes one of
256 values, so the dataset's own normalisation function is run once, on the CPU, on all of
them (a (C, 256) table), and a batch is a lookup into that table. A lookup copies values, so
the batch is the same on every device; normalising on a GPU would not be, bit for bit (torch's
CUDA division by a scalar multiplies by its reciprocal, which can differ in the last bit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import TensorDataset

LEVELS = 256  # values of a uint8 pixel


def lookup_table(normalise: Callable[[torch.Tensor], torch.Tensor], channels: int) -> torch.Tensor:
    """(channels, 256) float32: ``normalise`` of a (1, channels, 256, 1) uint8 image holding
    every pixel value in every channel. `normalise` maps a uint8 (N, C, H, W) batch to float32
    element by element (each output depends on its own pixel and channel only)."""
    every = torch.arange(LEVELS, dtype=torch.uint8).view(1, 1, LEVELS, 1)
    table = normalise(every.expand(1, channels, LEVELS, 1).contiguous())
    if table.dtype != torch.float32 or table.shape != (1, channels, LEVELS, 1):
        raise ValueError(f"normalise gave {table.dtype} {tuple(table.shape)}, not float32 "
                         f"(1, {channels}, {LEVELS}, 1)")
    return table.view(channels, LEVELS).contiguous()


class Uint8Images(TensorDataset):
    """``tensors`` are (N, C, H, W) uint8 images and their (N,) labels; ``batch`` (and item
    access) gives the images normalised as float32 through `table` ((C, 256) float32, row c the
    value of each pixel level in channel c; ``from_normalise`` builds it)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, table: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 \
                or table.shape != (images.shape[1], LEVELS):
            raise ValueError(f"need uint8 (N, C, H, W) images and a (C, {LEVELS}) table, got "
                             f"{images.dtype} {tuple(images.shape)} and {tuple(table.shape)}")
        super().__init__(images, labels)
        self.table = table.to(images.device)
        # Channel c's values start at c * 256 of the flattened table.
        self._offsets = (torch.arange(images.shape[1], dtype=torch.int32, device=images.device)
                         * LEVELS).view(-1, 1, 1)

    @classmethod
    def from_normalise(cls, images: torch.Tensor, labels: torch.Tensor,
                       normalise: Callable[[torch.Tensor], torch.Tensor]) -> Uint8Images:
        """Images normalised per batch exactly as ``normalise(images)`` would all at once."""
        return cls(images, labels, lookup_table(normalise, images.shape[1]))

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (..., C, H, W) -> float32 of the same shape, on their device."""
        # index_select with int32 indices: twice as fast on a CPU as indexing with int64 ones.
        where = (images.int() + self._offsets).reshape(-1)
        return self.table.view(-1).index_select(0, where).view(images.shape)

    def __getitem__(self, index):
        return self.batch(self.tensors[0][index]), self.tensors[1][index]

    def to(self, device: torch.device) -> Uint8Images:
        return Uint8Images(*(t.to(device) for t in self.tensors), self.table.to(device))
