"""Which eigen-directions to keep: a global threshold over every input and output direction of
every prunable layer, a per-layer cap, and the bisection that finds the threshold reaching a
parameter budget.

alecwangcq/EigenDamage-Pytorch ``pruner/kfac_eigen_pruner.py`` (``_do_prune``) and
``utils/prune_utils.py`` (``get_threshold``, ``filter_indices``): pool all importances, threshold
= sorted[int(ratio · N)], keep directions with importance > threshold; if a layer would lose more
than ``prune_ratio_limit`` of its input (or output) directions, keep those above its own
sorted[int(n · limit)] instead, i.e. its n − int(n · limit) − 1 most important ones; a bottleneck
larger than the layer it replaces is not built. Deviations: where the reference keeps "at least
one" direction it keeps index 0 (the *smallest* eigenvalue, an accident of ``filter_indices``);
here the most important one is kept. The reference sets the ratio directly; the harness asks for a
parameter count, so ``find_threshold`` bisects over the sorted pooled importances (the count is
monotone in the threshold) for the smallest threshold whose rebuilt layers fit the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from methods.eigendamage.rebuild import bottleneck_weight_count
from methods.selection import top_k


@dataclass(frozen=True)
class LayerPlan:
    """What pruning one layer needs to know: its outer channel counts, kernel size, the weights
    it has now (original layer, or the bottleneck it already is) and its direction scores."""

    c_in: int
    c_out: int
    kernel_numel: int
    current_weights: int
    is_bottleneck: bool
    imp_in: torch.Tensor
    imp_out: torch.Tensor


@dataclass(frozen=True)
class Decision:
    kept_in: torch.Tensor  # sorted indices of kept input eigen-directions
    kept_out: torch.Tensor
    rebuild: bool  # False: the bottleneck would be larger, leave the layer as it is
    weights: int  # weights of the layer after the decision


def keep_indices(imps: torch.Tensor, threshold: float, limit: float) -> torch.Tensor:
    n = imps.numel()
    keep = imps > threshold
    kept = int(keep.sum())
    if 1.0 - kept / n > limit or kept == 0:
        k = max(1, n - int(math.floor(n * limit + 1e-9)) - 1)
        keep = top_k(imps, k)
    return torch.nonzero(keep).flatten()


def decide(plan: LayerPlan, threshold: float, limit: float) -> Decision:
    kept_in = keep_indices(plan.imp_in, threshold, limit)
    kept_out = keep_indices(plan.imp_out, threshold, limit)
    weights = bottleneck_weight_count(plan.c_in, plan.c_out, kept_in.numel(), kept_out.numel(),
                                      plan.kernel_numel)
    # The reference compares against the layer as it stands (a bottleneck in later rounds).
    rebuild = weights <= plan.current_weights
    return Decision(kept_in, kept_out, rebuild, weights if rebuild else plan.current_weights)


def decide_all(plans: dict[str, LayerPlan], threshold: float, limit: float) -> dict[str, Decision]:
    return {name: decide(plan, threshold, limit) for name, plan in plans.items()}


def weights_after(plans: dict[str, LayerPlan], threshold: float, limit: float) -> int:
    return sum(d.weights for d in decide_all(plans, threshold, limit).values())


def pooled_importances(plans: dict[str, LayerPlan]) -> torch.Tensor:
    parts = [t for p in plans.values() for t in (p.imp_in, p.imp_out)]
    return torch.sort(torch.cat(parts)).values


@dataclass(frozen=True)
class ThresholdSearch:
    threshold: float
    ratio: float  # index / N of the threshold in the pooled importances (the reference's knob)
    weights: int  # weights of the prunable layers after pruning
    reached: bool


def find_threshold(plans: dict[str, LayerPlan], budget: int, limit: float) -> ThresholdSearch:
    """Smallest threshold whose rebuilt layers have at most `budget` weights; when even the
    largest one cannot reach it (per-layer caps, last layer kept), the largest one, marked
    ``reached=False``."""
    current = sum(p.current_weights for p in plans.values())
    if current <= budget:
        return ThresholdSearch(float("-inf"), 0.0, current, True)
    pooled = pooled_importances(plans)
    n = pooled.numel()

    def cost(idx: int) -> int:
        return weights_after(plans, float(pooled[idx]), limit)

    lo, hi = 0, n - 1
    if cost(hi) > budget:
        return ThresholdSearch(float(pooled[hi]), hi / n, cost(hi), False)
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return ThresholdSearch(float(pooled[lo]), lo / n, cost(lo), True)
