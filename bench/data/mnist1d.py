"""MNIST-1D generated offline by the ``mnist1d`` package's own procedural generator
(greydanus/mnist1d ``mnist1d/data.py: make_dataset``), cached under the data root.

``make_dataset`` reseeds Python's global ``random`` and NumPy's global generator
(``mnist1d.utils.set_seed``); we save and restore both around the call so that generating the
data cannot disturb anything else in the process.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from bench.config import DataConfig
from bench.data.base import DataBundle
from bench.store import atomic_torch_save

GENERATOR_SEED = 42  # the package's default: the canonical MNIST-1D


def generate(num_samples: int, train_split: float) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = train_split
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def load(cfg: DataConfig, root: Path) -> DataBundle:
    if cfg.num_samples < 10 or not 0.0 < cfg.train_split < 1.0:
        from bench.errors import UserError

        raise UserError("mnist1d needs num_samples >= 10 and train_split in (0, 1)")
    path = root / "mnist1d" / f"mnist1d-n{cfg.num_samples}-split{cfg.train_split:g}.pt"
    if path.exists():
        tensors = torch.load(path, weights_only=True)
    else:
        data = generate(cfg.num_samples, cfg.train_split)
        tensors = {
            "x": torch.tensor(data["x"], dtype=torch.float32),
            "y": torch.tensor(data["y"], dtype=torch.long),
            "x_test": torch.tensor(data["x_test"], dtype=torch.float32),
            "y_test": torch.tensor(data["y_test"], dtype=torch.long),
        }
        atomic_torch_save(tensors, path)
    train = TensorDataset(tensors["x"], tensors["y"])
    if cfg.train_subset:
        train = TensorDataset(tensors["x"][: cfg.train_subset], tensors["y"][: cfg.train_subset])
    test = TensorDataset(tensors["x_test"], tensors["y_test"])
    return DataBundle(train, test, (tensors["x"].shape[1],), 10)
