"""A small synthetic image dataset for tests: 3x32x32 images whose class is a fixed random
linear template plus noise, so a network can learn it quickly. Deterministic, nothing on disk."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from bench.config import DataConfig
from bench.data.base import DataBundle

SHAPE = (3, 32, 32)
NUM_CLASSES = 10


def _make(n: int, templates: torch.Tensor, generator: torch.Generator) -> TensorDataset:
    y = torch.randint(NUM_CLASSES, (n,), generator=generator)
    x = templates[y] + 0.5 * torch.randn((n, *SHAPE), generator=generator)
    return TensorDataset(x, y)


def load(cfg: DataConfig, root) -> DataBundle:
    g = torch.Generator().manual_seed(1234)
    templates = torch.randn((NUM_CLASSES, *SHAPE), generator=g)
    n_train = cfg.train_subset or 512
    return DataBundle(_make(n_train, templates, g), _make(256, templates, g), SHAPE, NUM_CLASSES)
