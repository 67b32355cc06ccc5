"""What every dataset loader returns, and deterministic batching over it.

Two paths, one order. The order of an epoch is ``randperm`` from the epoch generator; batch
augmentation draws from the same generator after it. In-memory datasets (``TensorDataset``) are
indexed directly, on whatever device their tensors live (``DataBundle.to`` moves them once);
decoded image sets hold uint8 pixels (``bench.data.stored.Uint8Images``) and each batch is
normalised where it lives, before the batch augmentation, as when the set was held normalised.
File datasets (ImageNet, Tiny-ImageNet) go through a ``DataLoader`` with worker processes; each
sample's per-image transform is seeded from (epoch generator seed, sample index), so augmented
images do not depend on the number of workers, on which worker decoded a sample, or on whether
the run was resumed. A resume in the middle of an epoch starts at the first unconsumed batch:
skipped batches are not loaded, only their augmentation draws are replayed (``advance``) so the
generator stays in step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from bench.data.stored import Uint8Images

# Train-time augmentation applied to a whole batch, drawing from the given generator so that a
# resumed run sees the same augmented batches.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

WORKERS_ENV = "SPARSEBENCH_DATA_WORKERS"


class Advanceable(Protocol):
    """A batch transform that can consume, without any image, exactly the generator draws it
    would make on a batch of `batch_size` (used to skip batches on resume)."""

    def advance(self, batch_size: int, generator: torch.Generator) -> None: ...


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    batch_transform: BatchTransform | None = None
    # DataLoaders of file datasets, built on first use and reused every epoch (their workers
    # persist). Keyed by (split, batch size, drop_last).
    _loaders: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def train_size(self) -> int:
        return len(self.train)  # type: ignore[arg-type]

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorDataset) and isinstance(self.test, TensorDataset)

    def to(self, device: torch.device) -> DataBundle:
        """In-memory datasets moved to `device` once (a no-op on their current device); file
        datasets stay where their loader workers put them."""
        def move(ds: Dataset) -> Dataset:
            if isinstance(ds, Uint8Images) and ds.tensors[0].device != device:
                return ds.to(device)
            if isinstance(ds, TensorDataset) and ds.tensors[0].device != device:
                return TensorDataset(*(t.to(device) for t in ds.tensors))
            return ds
        return DataBundle(move(self.train), move(self.test), self.input_shape, self.num_classes,
                          self.batch_transform)

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None,
                transform: BatchTransform | None = None, *, drop_last: bool = False,
                start: int = 0, workers: int | None = None, pin_memory: bool = False,
                shard: Shard | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``iterate_batches`` over ``self.train`` or ``self.test`` with this bundle's
        persistent DataLoaders for file datasets."""
        dataset = {"train": self.train, "test": self.test}[split]
        return iterate_batches(dataset, batch_size, generator, transform, drop_last,
                               start=start, workers=workers, pin_memory=pin_memory,
                               loaders=self._loaders, key=split, shard=shard)


class Shard(Protocol):
    """One rank's part of every batch (``bench.distributed.Rank``)."""

    rank: int
    world_size: int


def shard_part(n: int, shard: Shard) -> slice:
    """`shard`'s contiguous part of a batch of `n` examples, in ``torch.tensor_split`` sizes
    (the first n % W ranks one more). Raises RuntimeError when it would be empty."""
    if n < shard.world_size:
        raise RuntimeError(f"a batch of {n} examples cannot be split over {shard.world_size} "
                           "ranks: make the training set size modulo the batch size 0 or at "
                           "least the world size")
    base, extra = divmod(n, shard.world_size)
    start = shard.rank * base + min(shard.rank, extra)
    return slice(start, start + base + (1 if shard.rank < extra else 0))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders (and augments) epoch `epoch`: derived, never carried, so a run
    resumed at an epoch boundary sees exactly the batches an uninterrupted run would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def default_workers() -> int:
    """DataLoader workers for file datasets: ``$SPARSEBENCH_DATA_WORKERS``, else the job's CPUs
    (``$SLURM_CPUS_PER_TASK``), else the cores this process may run on. Results do not depend
    on it (samples are seeded by index), so it is not part of a run's config."""
    for name in (WORKERS_ENV, "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sample_seeds(generator: torch.Generator | None, indices: torch.Tensor) -> np.ndarray:
    """One 63-bit seed per sample, a function of the epoch generator's seed and the sample
    index only (SplitMix64 finaliser, Steele et al. 2014), drawn without consuming `generator`:
    the batch order and batch augmentation stay exactly as without it."""
    base = np.uint64(generator.initial_seed() if generator is not None else 0)
    with np.errstate(over="ignore"):
        z = indices.cpu().numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(1)


class SeededSamples(Dataset):
    """Wraps a map-style dataset: item ``(index, seed)`` is ``dataset[index]`` with torch's
    global RNG seeded from `seed` (and restored afterwards), so torchvision's random per-image
    transforms, which draw from the global RNG, are a function of the sample alone."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochItems(Sampler):
    """The (index, seed) items of the current epoch; replaced before each pass so that one
    DataLoader, and its persistent workers, serves every epoch."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator | None,
    transform: BatchTransform | None = None,
    drop_last: bool = False,
    *,
    start: int = 0,
    workers: int | None = None,
    pin_memory: bool = False,
    loaders: dict | None = None,
    key: str = "",
    shard: Shard | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``start, start + 1, ...`` of an epoch whose order comes from `generator` (in
    order when it is None). Batches before `start` are not loaded; a `transform` with an
    ``advance`` method replays their draws without images (one without it is applied to the
    skipped batches, which are then dropped). For a file dataset, `workers` DataLoader
    processes (default ``default_workers()``) decode ahead; `pin_memory` pins their output for
    fast host-to-GPU copies; a `loaders` dict keeps the DataLoader (and its workers) alive
    across calls under `key`.

    With `shard` (a rank of a multi-process run) each batch is that rank's part of the
    one-process batch (``shard_part``): the order and augmentation draws are the whole batch's,
    and a file dataset without a batch transform loads only the rank's own examples."""
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    augment = transform is not None and generator is not None
    first = min(start * batch_size, stop)
    if isinstance(dataset, TensorDataset):
        x_all, y_all = dataset.tensors
        # The images of a batch as the model sees them: stored uint8 pixels are normalised
        # first, so augmentation gets what it got when the set was held normalised.
        if isinstance(dataset, Uint8Images):
            def images(i: torch.Tensor) -> torch.Tensor:
                return dataset.batch(x_all[i])
        else:
            images = x_all.__getitem__
        order = order.to(x_all.device)
        for begin in range(0, stop, batch_size):
            idx = order[begin : begin + batch_size]
            if begin < first:
                if augment:
                    if hasattr(transform, "advance"):
                        transform.advance(len(idx), generator)
                    else:
                        transform(images(idx), generator)
                continue
            if shard is None:
                x = images(idx)
                if augment:
                    x = transform(x, generator)
                yield x, y_all[idx]
            elif augment:  # the draws are the whole batch's
                part = shard_part(len(idx), shard)
                yield transform(images(idx), generator)[part], y_all[idx][part]
            else:
                idx = idx[shard_part(len(idx), shard)]
                yield images(idx), y_all[idx]
        return
    dropped = 0  # batches loaded only to replay a transform that cannot advance()
    if augment and first:
        if hasattr(transform, "advance"):
            for _ in range(first // batch_size):
                transform.advance(batch_size, generator)
        else:
            first, dropped = 0, first // batch_size
    rest = order[first:stop]
    # Only this rank's examples are loaded, unless a batch transform draws for the whole batch.
    own = shard is not None and not augment
    if own:
        rest = torch.cat([rest[b:b + batch_size][shard_part(len(rest[b:b + batch_size]), shard)]
                          for b in range(0, len(rest), batch_size)]) if len(rest) else rest
        batch_size //= shard.world_size
    items = list(zip(rest.tolist(), sample_seeds(generator, rest).tolist(), strict=True))
    if not items:
        return
    workers = default_workers() if workers is None else workers
    cache_key = (key, batch_size, workers, pin_memory)
    loader = loaders.get(cache_key) if loaders is not None else None
    if loader is None:
        sampler = EpochItems()
        loader = DataLoader(SeededSamples(dataset), batch_size=batch_size, sampler=sampler,
                            num_workers=workers, pin_memory=pin_memory,
                            persistent_workers=workers > 0 and loaders is not None,
                            prefetch_factor=4 if workers > 0 else None,
                            # Its worker base seed is drawn from this generator, not from
                            # torch's global RNG (samples carry their own seeds anyway).
                            generator=torch.Generator().manual_seed(0))
        if loaders is not None:
            loaders[cache_key] = loader
    loader.sampler.items = items
    for index, (x, y) in enumerate(loader):
        if augment:
            x = transform(x, generator)
        if index >= dropped:
            if shard is not None and not own:
                part = shard_part(len(y), shard)
                x, y = x[part], y[part]
            yield x, y


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
