"""Shared test set-up: tests run on CPU with one intra-op thread (2-core CI machine, and
bit-identical comparisons must not depend on thread scheduling)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def data_root(tmp_path_factory) -> object:
    """One MNIST-1D cache shared by the whole session (generating it takes ~2 s)."""
    return tmp_path_factory.getbasetemp() / "data"
