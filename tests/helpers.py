"""Small builders shared by the tests."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import torch

from bench.config import DataConfig, MethodConfig, RunConfig, SparsityConfig, TrainConfig
from bench.run import MODEL_FILE, run_folder


def tiny_config(method: str = "static", target: float = 0.8, epochs: int = 3, seed: int = 0,
                **train) -> RunConfig:
    """MNIST-1D CNN on 600 training examples: a few seconds per run on one core."""
    return RunConfig(
        data=DataConfig(name="mnist1d", train_subset=600),
        method=MethodConfig(name=method),
        train=replace(TrainConfig(epochs=epochs, batch_size=50), **train),
        sparsity=SparsityConfig(target=target if method != "dense" else 0.0),
        seed=seed,
    )


def final_weights(root: Path, config) -> dict[str, torch.Tensor]:
    return torch.load(run_folder(root, config) / MODEL_FILE, weights_only=True)


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def terminal_sigint() -> None:
    """``preexec_fn`` for a command a test interrupts with SIGINT as a terminal's Ctrl-C would:
    SIGINT back to its default in the child. A process started in the background by a
    non-interactive shell (``cmd &``, nohup, some CI runners) inherits SIGINT ignored, and so
    would the command: it would never see the test's Ctrl-C (and rightly so, for the user who
    started it that way)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
