"""Thin dense: the same architecture with narrower layers, trained dense, sized to have as many
parameters as the sparse networks it is compared with (DSR baseline, Mostafa & Wang 2019, §4:
"original model with less wide layers, such that it had (1-s)N parameters").

Reference: IntelAI/dynamic-reparameterization trains the dense model at a smaller
``--widen-factor`` (``experiments/wrnet_experiments.yaml``, ``experiments/resnet_experiments.yaml``)
with no mask. Its hand-picked factors give 7-30% more parameters than the sparse nets they are
compared with (``reference/methods.md`` §1), so the width is *solved*, never tabulated:

    sparse nonzeros = every parameter of the model at the run's width
                      - prunable weights (under the run's layer policy)
                      + sum over prunable layers of kept_count(numel, 1 - target)

and the width multiplier w is the one whose dense model's parameter count (all parameters:
weights, biases, norm layers) is closest to that number. Channel counts are integers
(``round(base * w)`` per layer), so the count is a step function of w: bisection finds the step
that crosses the target, and the nearer of the two steps either side wins. On tiny models at
extreme sparsity one channel is a large fraction of the budget; ``summary()`` records the solved
width, both counts and their relative gap.

Parameter counting builds candidate models on the ``meta`` device (no memory, no RNG draws).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from methods.base import Method
from methods.masking import kept_count, prunable_layers

BISECTION_STEPS = 60


def shape_only(make_model: Callable[[float], nn.Module], width: float) -> nn.Module:
    """The model at `width` for counting only: on the meta device when the builder allows it."""
    try:
        with torch.device("meta"):
            return make_model(width)
    except (RuntimeError, NotImplementedError):
        # A builder that moves or fills tensors eagerly cannot run on meta; build it for real
        # without touching the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            return make_model(width)


def count_params(make_model: Callable[[float], nn.Module], width: float) -> int:
    return sum(p.numel() for p in shape_only(make_model, width).parameters())


def sparse_nonzeros(model: nn.Module, layer_policy: str, target: float) -> int:
    """Nonzero parameters of `model` sparsified to `target` with uniform per-layer counts."""
    total = sum(p.numel() for p in model.parameters())
    for module in prunable_layers(model, layer_policy).values():
        n = module.weight.numel()
        total -= n - kept_count(n, 1.0 - target)
    return total


def solve_width(make_model: Callable[[float], nn.Module], base_width: float,
                target_params: int) -> tuple[float, int]:
    """The width in (0, base_width] whose parameter count is nearest `target_params`."""
    top = count_params(make_model, base_width)
    if top <= target_params:
        return base_width, top
    lo, hi = 0.0, base_width  # invariant: count(lo) < target <= count(hi) (count(0+) is minimal)
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if count_params(make_model, mid) >= target_params:
            hi = mid
        else:
            lo = mid
    candidates = [(hi, count_params(make_model, hi))]
    if lo > 0:
        candidates.append((lo, count_params(make_model, lo)))
    width, params = min(candidates, key=lambda c: (abs(c[1] - target_params), -c[0]))
    # A short width that builds the same channels reads better in tables than 0.38271094...
    for digits in range(2, 9):
        short = round(width, digits)
        if short > 0 and count_params(make_model, short) == params:
            return short, params
    return width, params


class ThinDense(Method):
    name = "thin_dense"
    default_distribution = "uniform"
    distributions = ("uniform",)
    # The target decides the width; training itself uses no masks.
    uses_sparsity = True

    def __init__(self, config, hparams):
        super().__init__(config, hparams)
        self.solved: dict[str, Any] = {}

    def build_model(self, make_model: Callable[[float], nn.Module], target: float) -> nn.Module:
        base = self.config.model.width
        reference = shape_only(make_model, base)
        target_params = sparse_nonzeros(reference, self.config.sparsity.layer_policy, target)
        width, params = solve_width(make_model, base, target_params)
        self.solved = {
            "width": width,
            "params": params,
            "target_params": target_params,
            "relative_gap": (params - target_params) / target_params,
            "base_width": base,
            "base_params": sum(p.numel() for p in reference.parameters()),
        }
        return make_model(width)

    def summary(self) -> dict[str, Any]:
        return dict(self.solved)

