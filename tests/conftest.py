"""Shared test set-up: tests run on CPU with one intra-op thread (2-core CI machine, and
bit-identical comparisons must not depend on thread scheduling)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)

# Benchmarks time things; they run under `tox -e bench`, which sets SPARSEBENCH_BENCH=1.
collect_ignore_glob = [] if os.environ.get("SPARSEBENCH_BENCH") else ["benchmarks/*"]


@pytest.fixture
def data_root(tmp_path_factory) -> object:
    """One MNIST-1D cache shared by the whole session (generating it takes ~2 s)."""
    return tmp_path_factory.getbasetemp() / "data"


def pytest_collection_modifyitems(config, items):
    """The full kill -9 sweep (tests/test_kill_sweep.py) takes minutes: CI runs it (CI set),
    and so does ``-m kill_sweep``; a local run skips it, saying so."""
    if os.environ.get("CI") or "kill_sweep" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the full kill -9 sweep runs in CI (CI=1) or with "
                            "-m kill_sweep")
    for item in items:
        if "kill_sweep" in item.keywords:
            item.add_marker(skip)
