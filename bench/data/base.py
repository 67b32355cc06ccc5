"""What every dataset loader returns, and deterministic batching over it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

# Train-time augmentation applied to a whole batch, drawing from the given generator so that a
# resumed run sees the same augmented batches.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    batch_transform: BatchTransform | None = None

    @property
    def train_size(self) -> int:
        return len(self.train)  # type: ignore[arg-type]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders (and augments) epoch `epoch`: derived, never carried, so a run
    resumed at an epoch boundary sees exactly the batches an uninterrupted run would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator | None,
    transform: BatchTransform | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in a random order from `generator` (or in order when it is None)."""
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if isinstance(dataset, TensorDataset):
        x_all, y_all = dataset.tensors
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            x = x_all[idx]
            if transform is not None and generator is not None:
                x = transform(x, generator)
            yield x, y_all[idx]
        return
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order.tolist(),
                        drop_last=drop_last, num_workers=num_workers)
    for x, y in loader:
        if transform is not None and generator is not None:
            x = transform(x, generator)
        yield x, y


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
