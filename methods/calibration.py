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
* **Cache.** JSON at ``<root>/calibration/<key>.json``, where the key hashes the run's
  configuration with the seed, the target and every weight-decay field normalised away: all
  seeds of a grid cell share one calibration, and all targets share the evaluated runs (with
  the weight decay fixed, a run does not depend on the target), so a later target usually
  starts from a tight bracket. The file holds every (weight decay, sparsity) evaluation, added
  as each run finishes, and the answer per target and search settings; re-running is free.
  Updates are read-modify-write under an exclusive ``flock`` and written atomically; two
  processes that miss at once both search, deterministically, and merge their evaluations.

The search itself (``bisect_weight_decay``) only needs a callable ``train_short(weight_decay)
-> achieved_sparsity``; ``trainer_short_run`` builds that callable from ``bench.train``.
"""

from __future__ import annotations

import fcntl
import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
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
    # Every (weight decay, sparsity) point the search knew of, by weight decay.
    evaluations: tuple[tuple[float, float], ...]
    # Training runs this search itself started (the rest came from the cache).
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


def known_bracket(points: dict[float, float], target: float) -> tuple[float | None,
                                                                      float | None]:
    """The tightest [lo, hi] the known points give: lo the largest weight decay still too
    dense, hi the smallest above it that is sparse enough (None where there is none)."""
    below = [w for w, s in points.items() if s < target]
    lo = max(below) if below else None
    above = [w for w, s in points.items() if s >= target and (lo is None or w > lo)]
    return lo, (min(above) if above else None)


def bisect_weight_decay(train_short: Callable[[float], float], target: float,
                        settings: CalibrationSettings = CalibrationSettings(),
                        known: dict[float, float] | None = None) -> Calibration:
    """Search weight decay for `target` sparsity (see the module docstring), starting from the
    `known` (weight decay -> sparsity) points of earlier searches on the same runs."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"calibration target {target} must be in (0, 1)")
    if not 0.0 < settings.low < settings.high or settings.max_runs < 1:
        raise ValueError("calibration needs 0 < low < high and max_runs >= 1")
    points = dict(known or {})
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

    if not finished():
        lo, hi = known_bracket(points, target)
        if hi is None:
            # Bracket from above: `hi` must be sparse enough.
            hi = settings.high if lo is None else max(settings.high, 10.0 * lo)
            while run(hi) < target and not finished():
                lo, hi = hi, hi * 10.0
        if lo is None and not finished():
            # Bracket from below: `lo` must be dense enough.
            lo = min(settings.low, hi / 10.0)
            while run(lo) >= target and not finished():
                lo, hi = lo / 10.0, lo
        while not finished():
            assert lo is not None and hi is not None
            mid = split_point(lo, points.get(lo), hi, points.get(hi), target)
            if run(mid) < target:
                lo = mid
            else:
                hi = mid
    best_wd, best = closest()
    return Calibration(target=target, weight_decay=best_wd, achieved=best,
                       converged=density_gap(best, target) <= settings.rel_tol,
                       evaluations=tuple(sorted(points.items())), runs=runs)


def cache_key_config(config: RunConfig) -> RunConfig:
    """The target is not part of the cache key: with the weight decay fixed, the trained runs
    do not depend on it, so every target of one (model, data, recipe, policy, hyperparameters)
    cell shares the evaluations."""
    return replace(config, sparsity=replace(config.sparsity, target=0.0))


def calibration_key(config: RunConfig) -> str:
    """Readable, collision-safe file stem for a normalised calibration config."""
    keyed = cache_key_config(config)
    return f"{run_label(keyed)}-v{VERSION}-{run_id(keyed)}"


def cache_path(root: Path, config: RunConfig) -> Path:
    return Path(root) / CACHE_DIR / f"{calibration_key(config)}.json"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of one cache file between processes (runs of one grid on
    one file system); training happens outside the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _target_name(target: float) -> str:
    return f"{target:.6g}"


def _read(path: Path) -> dict[str, Any]:
    body = read_json(path) if path.exists() else {}
    if body.get("version") != VERSION:
        body = {}
    body.setdefault("evaluations", [])
    body.setdefault("targets", {})
    return body


def _record(path: Path, config: RunConfig, new_points: dict[float, float],
            result: Calibration | None, settings: CalibrationSettings) -> None:
    with _locked(path):
        body = _read(path)
        points = {float(w): float(s) for w, s in body["evaluations"]}
        points.update(new_points)
        body.update(version=VERSION, key=calibration_key(config),
                    config=to_dict(cache_key_config(config)),
                    evaluations=[list(e) for e in sorted(points.items())])
        if result is not None:
            body["targets"][_target_name(result.target)] = {
                "settings": asdict(settings), "calibration": result.to_dict()}
        atomic_write_json(path, body)


def cached_calibration(
    root: Path | None, config: RunConfig, train_short: Callable[[float], float],
    settings: CalibrationSettings,
) -> Calibration:
    """The calibration of `config` (normalised by the caller: seed and weight decays) for its
    target: from the cache under `root` when this target was searched with these settings,
    otherwise a search that reuses every cached evaluation and records each new run as soon as
    it finishes. With no root, search without caching."""
    target = config.sparsity.target
    if root is None:
        return bisect_weight_decay(train_short, target, settings)
    path = cache_path(root, config)
    with _locked(path):
        body = _read(path)
    entry = body["targets"].get(_target_name(target))
    if entry is not None and entry["settings"] == asdict(settings):
        return Calibration.from_dict(entry["calibration"])
    known = {float(w): float(s) for w, s in body["evaluations"]}

    def recorded(wd: float) -> float:
        achieved = float(train_short(wd))
        _record(path, config, {wd: achieved}, None, settings)
        return achieved

    result = bisect_weight_decay(recorded, target, settings, known)
    _record(path, config, dict(result.evaluations), result, settings)
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
