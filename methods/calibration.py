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
* **Cache.** The result is stored as JSON at ``<root>/calibration/<key>.json``, where the key
  hashes the run's configuration with the seed and every weight-decay field normalised away, so
  all seeds of a grid cell share one calibration and re-running is free. Two processes that
  miss the cache at once both calibrate and write the same deterministic answer atomically.

The search itself (``bisect_weight_decay``) only needs a callable ``train_short(weight_decay)
-> achieved_sparsity``; ``trainer_short_run`` builds that callable from ``bench.train``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.config import RunConfig, run_id, run_label, to_dict
from bench.store import atomic_write_json, read_json

CALIBRATION_SEED = 0
CACHE_DIR = "calibration"
# Bump when the search or the trained quantity changes, so stale caches are not reused.
VERSION = 1
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
    evaluations: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "evaluations": [list(e) for e in self.evaluations]}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Calibration:
        return cls(
            target=float(body["target"]), weight_decay=float(body["weight_decay"]),
            achieved=float(body["achieved"]), converged=bool(body["converged"]),
            evaluations=tuple((float(w), float(s)) for w, s in body["evaluations"]),
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
    """Search weight decay for `target` sparsity (see the module docstring)."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"calibration target {target} must be in (0, 1)")
    if not 0.0 < settings.low < settings.high or settings.max_runs < 1:
        raise ValueError("calibration needs 0 < low < high and max_runs >= 1")
    evaluations: list[tuple[float, float]] = []

    def run(wd: float) -> float:
        achieved = float(train_short(wd))
        evaluations.append((wd, achieved))
        return achieved

    def done() -> bool:
        last = evaluations[-1][1]
        return density_gap(last, target) <= settings.rel_tol or len(evaluations) >= \
            settings.max_runs

    lo, hi = settings.low, settings.high
    # Bracket from above: `hi` must be sparse enough.
    while run(hi) < target and not done():
        lo, hi = hi, hi * 10.0
    if not done() and lo == settings.low:
        # Bracket from below: `lo` must be dense enough.
        while run(lo) > target and not done():
            lo, hi = lo / 10.0, lo
    known = dict(evaluations)
    while not done():
        mid = split_point(lo, known.get(lo), hi, known.get(hi), target)
        achieved = run(mid)
        known[mid] = achieved
        if achieved < target:
            lo = mid
        else:
            hi = mid
    best_wd, best = min(evaluations, key=lambda e: (density_gap(e[1], target), e[0]))
    return Calibration(target=target, weight_decay=best_wd, achieved=best,
                       converged=density_gap(best, target) <= settings.rel_tol,
                       evaluations=tuple(evaluations))


def calibration_key(config: RunConfig) -> str:
    """Readable, collision-safe file stem for a normalised calibration config."""
    return f"{run_label(config)}-v{VERSION}-{run_id(config)}"


def cache_path(root: Path, config: RunConfig) -> Path:
    return Path(root) / CACHE_DIR / f"{calibration_key(config)}.json"


def cached_calibration(
    root: Path | None, config: RunConfig, train_short: Callable[[float], float],
    settings: CalibrationSettings,
) -> Calibration:
    """The calibration for `config` (already normalised by the caller) from the cache under
    `root`, or a fresh search stored there. With no root, search without caching."""
    path = cache_path(root, config) if root is not None else None
    if path is not None and path.exists():
        body = read_json(path)
        if body.get("settings") == asdict(settings):
            return Calibration.from_dict(body["calibration"])
    result = bisect_weight_decay(train_short, config.sparsity.target, settings)
    if path is not None:
        atomic_write_json(path, {
            "version": VERSION,
            "key": calibration_key(config),
            "config": to_dict(config),
            "settings": asdict(settings),
            "calibration": result.to_dict(),
        })
    return result


def trainer_short_run(make_config: Callable[[float], RunConfig],
                      data_root: Path | None) -> Callable[[float], float]:
    """``train_short(wd)``: train ``make_config(wd)`` with ``bench.train`` in a scratch folder
    and return the sparsity its final masks count (1.0 if it diverged). The caller's RNG state
    is left as it was."""

    def train_short(weight_decay: float) -> float:
        # bench.train imports the method registry, which imports this module: import late.
        from bench.flops import count
        from bench.train import Diverged, Trainer

        config = make_config(weight_decay)
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with tempfile.TemporaryDirectory(prefix="calibration-") as scratch, \
                torch.random.fork_rng(devices=cuda):
            try:
                outcome = Trainer(config, Path(scratch), data_root=data_root).run()
            except Diverged:
                return 1.0
        return count(outcome.model, outcome.data.input_shape).sparsity

    return train_short
