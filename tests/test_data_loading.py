"""The data path: mid-epoch resume starts at the first unconsumed batch without loading the
skipped ones, file datasets decode in DataLoader workers with per-sample seeds (results do not
depend on the worker count), loaders persist across epochs, in-memory data moves once."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from bench.config import DataConfig, ModelConfig
from bench.data import load_dataset
from bench.data.base import (
    DataBundle,
    default_workers,
    epoch_generator,
    iterate_batches,
    sample_seeds,
)
from bench.data.cifar import pad_crop_flip
from bench.run import run_folder, run_one
from bench.train import Interrupted
from tests.helpers import assert_identical, final_weights, tiny_config

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class Counting(Dataset):
    """Images whose pixels encode their index; counts every load (workers=0 only)."""

    def __init__(self, n: int) -> None:
        self.n, self.loaded = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.loaded.append(i)
        return torch.full((3, 8, 8), float(i)), i % 10


class DrawsWithoutAdvance:
    """A batch transform that cannot replay its draws: skipped batches must be computed."""

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x + torch.rand(len(x), 1, 1, 1, generator=g)


def equal_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("transform", [None, pad_crop_flip(MEAN, STD), DrawsWithoutAdvance()])
def test_in_memory_resume_starts_at_the_first_unconsumed_batch(transform):
    x = torch.randn(23, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ds = TensorDataset(x, torch.arange(23))
    full = list(iterate_batches(ds, 5, epoch_generator(3, 2), transform))
    assert [len(y) for _, y in full] == [5, 5, 5, 5, 3]
    for start in (0, 1, 4, 5):
        tail = list(iterate_batches(ds, 5, epoch_generator(3, 2), transform, start=start))
        equal_batches(tail, full[start:])


def test_file_dataset_resume_does_not_load_the_skipped_batches():
    ds = Counting(23)
    t = pad_crop_flip(MEAN, STD)
    full = list(iterate_batches(ds, 5, epoch_generator(0, 1), t, workers=0))
    order = torch.randperm(23, generator=epoch_generator(0, 1)).tolist()
    assert sorted(ds.loaded) == list(range(23))
    ds.loaded.clear()
    tail = list(iterate_batches(ds, 5, epoch_generator(0, 1), t, start=3, workers=0))
    equal_batches(tail, full[3:])
    assert ds.loaded == order[15:]  # exactly the unconsumed samples, in order


def test_file_dataset_resume_with_a_transform_that_cannot_advance():
    ds = Counting(12)
    full = list(iterate_batches(ds, 4, epoch_generator(0, 0), DrawsWithoutAdvance(), workers=0))
    tail = list(iterate_batches(ds, 4, epoch_generator(0, 0), DrawsWithoutAdvance(), start=2,
                                workers=0))
    equal_batches(tail, full[2:])


def test_sample_seeds_depend_on_epoch_and_index_only():
    idx = torch.tensor([0, 1, 2, 7])
    a = sample_seeds(epoch_generator(0, 0), idx)
    g = epoch_generator(0, 0)
    torch.randperm(10, generator=g)  # a consumed generator gives the same seeds
    assert np.array_equal(a, sample_seeds(g, idx))
    assert np.array_equal(a[[3, 0]], sample_seeds(epoch_generator(0, 0), torch.tensor([7, 0])))
    assert len(set(a.tolist())) == 4 and (a < 2**63).all()
    assert not np.array_equal(a, sample_seeds(epoch_generator(0, 1), idx))
    assert not np.array_equal(a, sample_seeds(epoch_generator(1, 0), idx))


def write_imagenet(root, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for wnid in ("n01", "n02"):
        for split, n in (("train", per_class), ("val", 1)):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    folder / f"{i}.png")


def test_augmented_images_do_not_depend_on_workers_and_leave_the_global_rng(tmp_path):
    write_imagenet(tmp_path)
    b = load_dataset(DataConfig(name="imagenet", augment=True), tmp_path)
    state = torch.get_rng_state()
    serial = list(iterate_batches(b.train, 4, epoch_generator(0, 0), workers=0))
    assert torch.equal(torch.get_rng_state(), state)  # per-sample seeding restores it
    parallel = list(iterate_batches(b.train, 4, epoch_generator(0, 0), workers=2))
    equal_batches(serial, parallel)
    # Each sample is its own seeded draw: the image at a position equals the sample loaded
    # alone under its seed, and another epoch augments differently.
    order = torch.randperm(6, generator=epoch_generator(0, 0))
    seeds = sample_seeds(epoch_generator(0, 0), order)
    torch.manual_seed(int(seeds[5]))
    assert torch.equal(serial[1][0][1], b.train[int(order[5])][0])
    other = list(iterate_batches(b.train, 4, epoch_generator(0, 1), workers=0))
    assert not torch.equal(torch.cat([x for x, _ in serial]), torch.cat([x for x, _ in other]))


def test_bundle_keeps_one_loader_with_persistent_workers(tmp_path):
    write_imagenet(tmp_path)
    b = load_dataset(DataConfig(name="imagenet", augment=True), tmp_path)
    e0 = [y for _, y in b.batches("train", 4, epoch_generator(0, 0), workers=2)]
    (loader,) = b._loaders.values()
    assert loader.persistent_workers and loader.num_workers == 2
    e1 = [y for _, y in b.batches("train", 4, epoch_generator(0, 1), workers=2)]
    assert list(b._loaders.values()) == [loader]
    targets = torch.tensor(b.train.targets)
    for e, y in ((0, e0), (1, e1)):
        order = torch.randperm(6, generator=epoch_generator(0, e))
        assert torch.equal(torch.cat(y), targets[order])


def test_workers_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    monkeypatch.delenv("SPARSEBENCH_DATA_WORKERS", raising=False)
    assert default_workers() == 6
    monkeypatch.setenv("SPARSEBENCH_DATA_WORKERS", "3")
    assert default_workers() == 3


def test_in_memory_bundle_moves_once():
    ds = TensorDataset(torch.randn(4, 2), torch.arange(4))
    b = DataBundle(ds, ds, (2,), 4)
    assert b.to(torch.device("cpu")).train is ds  # already there: no copy
    moved = b.to(torch.device("meta"))
    assert moved.train.tensors[0].device.type == "meta" and moved.test.tensors[1].shape == (4,)
    assert ds.tensors[0].device.type == "cpu"


def test_file_dataset_run_with_two_workers_resumes_bit_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBENCH_DATA_WORKERS", "2")
    data_root = tmp_path / "data"
    write_imagenet(data_root, per_class=5)
    base = tiny_config("gmp", 0.5, epochs=2, optimizer="sgd", lr=0.05)
    config = replace(base, data=DataConfig(name="imagenet", augment=True),
                     model=ModelConfig(name="resnet8"),
                     train=replace(base.train, batch_size=4, eval_batch_size=4))
    run_one(config, tmp_path / "straight", data_root)
    calls = {"n": 0}

    def stop_at_step_2():
        calls["n"] += 1
        return calls["n"] == 2

    with pytest.raises(Interrupted, match="stopped at step 2$"):  # mid epoch 1 (3 batches)
        run_one(config, tmp_path / "resumed", data_root, should_stop=stop_at_step_2)
    assert (run_folder(tmp_path / "resumed", config) / "checkpoint.pt").exists()
    run_one(config, tmp_path / "resumed", data_root)
    assert_identical(final_weights(tmp_path / "resumed", config),
                     final_weights(tmp_path / "straight", config))
