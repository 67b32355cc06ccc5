"""Weight-decay calibration: find the weight decay at which a run reaches a target sparsity.

STR (``methods/str_method.py``) has no sparsity knob of its own: its learnt thresholds settle
where the loss gradient balances the weight decay, so the achieved sparsity is a function of the
weight decay (``RAIVNLab/STR`` tunes wd by hand per sparsity: ``configs/largescale/*-str.yaml``,
"Change this according to reported numbers in appendix"). A grid cell that asks for a target
must nevertheless land near it, so the harness finds the weight decay itself:

* **What is searched.** Achieved sparsity as a function of weight decay, assumed non-decreasing
  (more decay pulls every threshold s towards 0, i.e. sigmoid(s) up). Each evaluation is one
  training run of the *same* recipe, model, data, layer policy and method hyperparameters, at
  seed ``CALIBRATION_SEED``; its achieved sparsity is read from the final masks, exactly as the
  result counts it. A run that diverges counts as sparsity 1 (too much decay).
* **How.** Bisection in log(weight decay) on [low, high]: evaluate ``high`` (multiplied by 10
  while it is still too dense), then ``low`` (divided by 10 while it is already too sparse), then
  split the bracket: at its geometric middle while an end is saturated (fully dense or fully
  pruned), otherwise where logit(sparsity), interpolated linearly in log(wd) between the ends,
  meets the target (false position; the curve is sigmoid-like in log wd), clamped to the middle
  half of the bracket so every run shrinks it by at least a quarter.
  It stops as soon as an evaluation is within ``rel_tol`` of the target *density*
  (|d - d*| <= rel_tol * d*, so 90% +- 0.5 points, 98% +- 0.1 points at the default 0.05) or
  after ``max_runs`` runs; the closest evaluation wins either way, and ``converged`` says
  whether it met the tolerance. Runs are "short" in the sense that the search uses the
  smallest faithful run: the run's own recipe (a cheaper proxy would land somewhere else, since
  when STR's thresholds wake up depends on lr * wd * steps).
* **Reuse, never a different path.** The search path (which weight decays it evaluates, in
  which order) is a function of the target, the settings and the evaluations' values only, never
  of what earlier searches evaluated: a grid's runs give the same answer in any order, serially
  or concurrently (issue 12). Reuse happens below the search: each evaluation is a trial
  training (``Harness.trial_train``) whose outcome the harness keeps by run id, and the trial
  config is normalised so that identical evaluations have one run id — every seed of a grid cell
  and every target share them (with the weight decay fixed, a run depends on neither). So the
  search for a second target re-trains nothing its path shares with the first (at least the
  bracket's first end), and a rerun trains nothing at all.

The search itself (``bisect_weight_decay``) only needs a callable ``train_short(weight_decay)
-> achieved_sparsity``; STR builds it from ``ctx.harness.trial_train``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

CALIBRATION_SEED = 0
# A run whose sparsity is within EDGE of 0 or 1 is saturated: no slope to interpolate on.
EDGE = 1e-3


@dataclass(frozen=True)
class CalibrationSettings:
    low: float = 1e-6
    high: float = 1e-1
    rel_tol: float = 0.05
    max_runs: int = 10


@dataclass(frozen=True)
class Calibration:
    target: float
    weight_decay: float
    achieved: float
    converged: bool
    # Every (weight decay, sparsity) point the search evaluated, by weight decay.
    evaluations: tuple[tuple[float, float], ...]
    # Evaluations the search made: trial trainings, each trained once by the harness however
    # many searches evaluate it.
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "evaluations": [list(e) for e in self.evaluations]}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Calibration:
        return cls(
            target=float(body["target"]), weight_decay=float(body["weight_decay"]),
            achieved=float(body["achieved"]), converged=bool(body["converged"]),
            evaluations=tuple((float(w), float(s)) for w, s in body["evaluations"]),
            runs=int(body.get("runs", 0)),
        )


def density_gap(achieved: float, target: float) -> float:
    """|achieved density - target density| relative to the target density."""
    return abs((1.0 - achieved) - (1.0 - target)) / (1.0 - target)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def split_point(lo: float, s_lo: float | None, hi: float, s_hi: float | None,
                target: float) -> float:
    """Where to evaluate next inside [lo, hi] (see the module docstring)."""
    t = 0.5
    ends = (s_lo, s_hi)
    if all(v is not None and EDGE < v < 1.0 - EDGE for v in ends):
        y_lo, y_hi, y = (logit(v) for v in (s_lo, s_hi, target))
        if y_hi > y_lo:
            t = min(max((y - y_lo) / (y_hi - y_lo), 0.25), 0.75)
    return math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))


def bisect_weight_decay(train_short: Callable[[float], float], target: float,
                        settings: CalibrationSettings = CalibrationSettings()) -> Calibration:
    """Search weight decay for `target` sparsity (see the module docstring). The weight decays
    evaluated depend only on `target`, `settings` and the values `train_short` returns.
    Raises ValueError for a target outside (0, 1) or settings without 0 < low < high and
    max_runs >= 1."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"calibration target {target} must be in (0, 1)")
    if not 0.0 < settings.low < settings.high or settings.max_runs < 1:
        raise ValueError("calibration needs 0 < low < high and max_runs >= 1")
    points: dict[float, float] = {}
    runs = 0

    def run(wd: float) -> float:
        nonlocal runs
        points[wd] = float(train_short(wd))
        runs += 1
        return points[wd]

    def closest() -> tuple[float, float]:
        return min(points.items(), key=lambda e: (density_gap(e[1], target), e[0]))

    def finished() -> bool:
        hit = bool(points) and density_gap(closest()[1], target) <= settings.rel_tol
        return hit or runs >= settings.max_runs

    # Bracket from above: `hi` must be sparse enough.
    lo: float | None = None
    hi = settings.high
    while run(hi) < target and not finished():
        lo, hi = hi, hi * 10.0
    if lo is None and not finished():
        # Bracket from below: `lo` must be dense enough.
        lo = min(settings.low, hi / 10.0)
        while run(lo) >= target and not finished():
            lo, hi = lo / 10.0, lo
    while not finished():
        assert lo is not None
        mid = split_point(lo, points.get(lo), hi, points.get(hi), target)
        if run(mid) < target:
            lo = mid
        else:
            hi = mid
    best_wd, best = closest()
    return Calibration(target=target, weight_decay=best_wd, achieved=best,
                       converged=density_gap(best, target) <= settings.rel_tol,
                       evaluations=tuple(sorted(points.items())), runs=runs)
