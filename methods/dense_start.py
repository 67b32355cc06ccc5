"""Starting from the finished dense run: the one rule shared by every method that prunes a
trained network (EigenDamage; GMP with ``from_dense``, DSR's "compressed sparse" baseline).

The dense run is the grid's own dense run of the same model, data, recipe and seed, found by run
id through ``ctx.harness.finished_model`` (never a private copy). A method that starts from it
returns ``dense_config(self.config)`` from ``Method.dependencies``, so every executor trains it
first; a run whose dense run has not finished fails, naming it, and never trains it itself
(``bench.run.RunHarness.finished_model``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from bench.config import MethodConfig, RunConfig
from methods.base import FinishedRun, SetupContext
from methods.masking import MASK_BUFFER


def dense_config(config: RunConfig) -> RunConfig:
    """The dense run `config` starts from: same model, data, recipe and seed. The sparsity
    section keeps its layer policy and distribution (a grid's dense run carries the grid's common
    [sparsity] table) with the target set to 0, as the grid does for methods that ignore it."""
    return replace(config, method=MethodConfig("dense"),
                   sparsity=replace(config.sparsity, target=0.0))


def finished_dense_run(ctx: SetupContext, config: RunConfig, method: str) -> FinishedRun:
    """The finished dense run of `config`, asked of the harness. Raises RuntimeError when the
    method is driven without a harness (it cannot start from nothing)."""
    if ctx.harness is None:
        raise RuntimeError(f"{method} starts from its finished dense run: it needs the "
                           "harness (ctx.harness) to find it")
    return ctx.harness.finished_model(dense_config(config))


def load_dense_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load the dense run's weights into `model` in place; masks are left out because the two
    runs' layer policies may attach them to different layers (a dense run's masks are all ones
    anyway). Raises ValueError when a weight is missing or unexpected."""
    weights = {k: v for k, v in state.items() if not k.endswith(MASK_BUFFER)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith(MASK_BUFFER)]
    if missing or unexpected:
        raise ValueError(f"dense weights do not fit the model: missing {missing}, "
                         f"unexpected {unexpected}")
