"""MNIST-1D generated offline, cached, and isolated from the global RNGs."""

from __future__ import annotations

import random

import numpy as np
import torch

from bench.config import DataConfig
from bench.data import load_dataset
from bench.data.base import epoch_generator, iterate_batches


def test_default_split_and_shape(data_root):
    bundle = load_dataset(DataConfig(), data_root)
    x, y = bundle.train.tensors
    xt, yt = bundle.test.tensors
    assert x.shape == (4000, 40) and xt.shape == (1000, 40)
    assert bundle.input_shape == (40,) and bundle.num_classes == 10
    counts = torch.bincount(y, minlength=10)
    assert counts.min() >= 380 and counts.max() <= 420  # 394-411 per class in the reference
    assert abs(float(torch.cat([x, xt]).mean())) < 1e-5  # the generator z-scores globally
    assert (data_root / "mnist1d" / "mnist1d-n5000-split0.8.pt").exists()


def test_generation_leaves_global_rngs_alone(tmp_path):
    random.seed(123)
    np.random.seed(123)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    load_dataset(DataConfig(num_samples=200), tmp_path)  # generates: not cached yet
    assert random.random() == expected_py
    assert np.random.rand() == expected_np


def test_size_is_configurable_and_cached_copy_is_identical(tmp_path):
    a = load_dataset(DataConfig(num_samples=1000, train_split=0.5), tmp_path)
    b = load_dataset(DataConfig(num_samples=1000, train_split=0.5), tmp_path)
    assert len(a.train) == 500 and len(a.test) == 500
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])


def test_epoch_order_is_a_function_of_seed_and_epoch(data_root):
    bundle = load_dataset(DataConfig(), data_root)
    first = [y for _, y in iterate_batches(bundle.train, 100, epoch_generator(0, 3))]
    again = [y for _, y in iterate_batches(bundle.train, 100, epoch_generator(0, 3))]
    other = [y for _, y in iterate_batches(bundle.train, 100, epoch_generator(0, 4))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert sorted(torch.cat(first).tolist()) == sorted(bundle.train.tensors[1].tolist())


def test_a_run_waiting_for_the_cache_lock_says_what_the_holder_may_be_doing(data_root, capsys):
    """Parallel runs and DDP ranks hold the cache's lock while they read and check an existing
    cache, not only while one writes it; the wait said "to write" whenever two runs started
    together (every DDP run)."""
    import threading
    import time

    from filelock import FileLock

    from bench.data.mnist1d import cache_path

    cfg = DataConfig(name="mnist1d")
    load_dataset(cfg, data_root)  # the cache exists: nobody needs to write it
    path = cache_path(cfg, data_root)
    lock = FileLock(path.with_name(path.name + ".lock"), is_singleton=False, thread_local=False)
    lock.acquire()
    loaded = []
    reader = threading.Thread(target=lambda: loaded.append(load_dataset(cfg, data_root)))
    reader.start()
    deadline = time.monotonic() + 60
    out = ""
    while "waiting" not in out and time.monotonic() < deadline:
        time.sleep(0.05)
        out += capsys.readouterr().out
    lock.release()
    reader.join()
    assert out == (f"sparsebench: waiting for another process using the data cache {path} "
                   "(checking or writing it)\n")
    assert len(loaded[0].train) == 4000
