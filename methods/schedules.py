"""When methods change their masks, and by how much: every schedule a method uses.

* GMP's cubic sparsity and its update steps (TensorFlow ``contrib/model_pruning/python/
  pruning.py``, ``Pruning._setup_sparsity`` / ``_maybe_update_masks``).
* The DSR reference rewiring schedule (IntelAI/dynamic-reparameterization ``main.py``
  ``train()`` and ``learning_schedules/wrnet_schedule.yaml``: WRN-28-2 on CIFAR-10, 200 epochs
  of 500 steps), used by DSR, SET's DSR variant and DeepR's DSR variant (temperatures).
* RigL's update steps and cosine drop fraction (google-research/rigl
  ``rigl/sparse_optimizers_base.py``: ``is_mask_update_iter``, ``get_drop_fraction``).

Reference schedules are absolute step counts of long runs; here they are fractions of the run's
total steps, so a 20-epoch MNIST-1D run follows the same shape as the 250-epoch CIFAR one.
Steps are the trainer's 1-based count of optimizer steps taken unless a function says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.config import check


def scaled(fraction: float, total_steps: int) -> int:
    """A fraction of the run as a step count (rounded half to even, as Python's round)."""
    return int(round(fraction * total_steps))


def piecewise_index(starts: Sequence[int], iteration: int) -> int:
    """Index of the last phase whose start is <= iteration (the DSR reference's
    ``get_schedule_val``: the value of the last schedule entry not after the query)."""
    index = 0
    for i, start in enumerate(starts):
        if iteration >= start:
            index = i
    return index


# --- GMP (Zhu & Gupta 2017; TF model_pruning) -------------------------------------------------
def cubic_sparsity(step: int, begin: int, end: int, s_i: float, s_f: float, exponent: int) -> float:
    """``_setup_sparsity``: s_f + (s_i - s_f) (1 - p)^exponent, p = clip((t - begin) /
    (end - begin), 0, 1); p = 1 from ``end`` on (also when end == begin)."""
    p = 1.0 if step >= end else min(max((step - begin) / (end - begin), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - p) ** exponent


def geometric_sparsity(step: int, begin: int, end: int, s_i: float, s_f: float) -> float:
    """Constant-fraction pruning: the density moves geometrically from 1 - s_i to 1 - s_f,
    1 - (1 - s_i)^(1 - p) (1 - s_f)^p with ``cubic_sparsity``'s p, so every update removes the
    same fraction of the weights still there. DSR's ResNet-50 "compressed sparse" jobs prune
    this way (IntelAI/dynamic-reparameterization ``main.py`` without
    ``--cubic-prune-schedule``: each of n prunes removes 1 - (1 - s)^(1/n) of the remaining
    weights, so the density after prune k is (1 - s)^(k/n))."""
    p = 1.0 if step >= end else min(max((step - begin) / (end - begin), 0.0), 1.0)
    return 1.0 - (1.0 - s_i) ** (1.0 - p) * (1.0 - s_f) ** p


@dataclass(frozen=True)
class PruningSchedule:
    """GMP's update steps in a run of ``total_steps``.

    TF's ``_maybe_update_masks`` updates when begin <= t <= end and last_update + frequency <= t
    (last_update starts at 0), so the updates are at max(begin, frequency) + k frequency up to
    ``end``, and none at ``end`` itself unless it falls on that grid. ``end`` is set to begin
    plus a whole number of frequencies (the scaled span divided by the frequency, rounded),
    as in the reference configuration (RigL CIFAR: 20000 to 75000 by 1000), so the last update
    is at ``end`` and reaches the final sparsity exactly.
    """

    begin: int
    end: int
    frequency: int

    @classmethod
    def scaled(cls, begin_fraction: float, end_fraction: float, frequency_fraction: float,
               total_steps: int) -> PruningSchedule:
        begin = scaled(begin_fraction, total_steps)
        frequency = max(1, scaled(frequency_fraction, total_steps))
        span = max(0, scaled(end_fraction, total_steps) - begin)
        return cls(begin, begin + int(round(span / frequency)) * frequency, frequency)

    def first(self) -> int:
        return max(self.begin, self.frequency)

    def is_update_step(self, step: int) -> bool:
        first = self.first()
        return first <= step <= self.end and (step - first) % self.frequency == 0

    def points(self) -> list[int]:
        """The steps at which masks change (for documentation and tests)."""
        return list(range(self.first(), self.end + 1, self.frequency))


# --- the DSR reference run (WRN-28-2, CIFAR-10) -----------------------------------------------
DSR_REF_EPOCHS = 200
DSR_REF_STEPS = DSR_REF_EPOCHS * 500  # 50,000 training images, batch 100 (main.py default)
# Weights in the WRN-28-2 SparseTensors (every 3x3 block conv; first conv, shortcuts and the
# classifier are dense in that model): 69,120 + 276,480 + 1,105,920.
DSR_REF_SPARSE_WEIGHTS = 1_451_520
DSR_REF_N_PRUNE = 20_000  # --n-prune-params in experiments/wrnet_experiments.yaml
# rewire_period_schedule / DeepR_temperature_schedule change at these epochs ...
DSR_PHASE_FRACTIONS = tuple(e / DSR_REF_EPOCHS for e in (0, 25, 80, 140))
# ... to these rewire periods (iterations) ...
DSR_PERIOD_FRACTIONS = tuple(p / DSR_REF_STEPS for p in (100, 200, 400, 800))
# ... and these DeepR temperatures.
DSR_TEMPERATURES = (1.0e-5, 1.0e-8, 1.0e-12, 1.0e-15)
DSR_STOP_FRACTION = 190 / DSR_REF_EPOCHS  # --stop-rewire-epoch 190


@dataclass(frozen=True)
class RewireSchedule:
    """When a periodic rewiring happens, in optimizer steps.

    The reference rewires after the batch with 0-based global index ``it`` when ``it != 0``,
    ``it % period == 0`` and the batch's epoch is before the stop epoch, the period being the
    one of the schedule phase the batch is in. Here phase starts, periods and the stop point are
    fractions of the run's total steps (periods at least one step), so a 20-epoch run rewires
    as many times, at the same relative points, as the 200-epoch reference.
    """

    starts: tuple[int, ...]
    periods: tuple[int, ...]
    stop: int

    @classmethod
    def scaled(cls, phase_fractions: Sequence[float], period_fractions: Sequence[float],
               stop_fraction: float, total_steps: int) -> RewireSchedule:
        if len(phase_fractions) != len(period_fractions) or not phase_fractions:
            raise ValueError("phase and period fractions must be non-empty and of equal length")
        return cls(
            starts=tuple(scaled(f, total_steps) for f in phase_fractions),
            periods=tuple(max(1, scaled(f, total_steps)) for f in period_fractions),
            stop=scaled(stop_fraction, total_steps),
        )

    def is_rewire_step(self, step: int) -> bool:
        it = step - 1
        if it <= 0 or it >= self.stop:
            return False
        return it % self.periods[piecewise_index(self.starts, it)] == 0

    def points(self, total_steps: int) -> list[int]:
        return [s for s in range(1, total_steps + 1) if self.is_rewire_step(s)]


def _dsr_schedule_fields(same_length: str) -> dict:
    return {
        "phase_fractions": field(default=DSR_PHASE_FRACTIONS, metadata=check(ge=0, le=1)),
        "period_fractions": field(default=DSR_PERIOD_FRACTIONS,
                                  metadata=check(gt=0, le=1, same_length=same_length)),
        "stop_fraction": field(default=DSR_STOP_FRACTION, metadata=check(ge=0, le=1)),
    }


# The schedule's knobs for a hyperparameter class that names them ``dsr_*`` (SET).
DSR_SCHEDULE_FIELDS = _dsr_schedule_fields("dsr_phase_fractions")


@dataclass(frozen=True)
class DSRScheduleHparams:
    """The DSR rewiring schedule's knobs, declared once for every method that rewires on it
    (DSR, SET's DSR variant): phase starts and the stop point as fractions of the run, periods
    as fractions of its total steps (defaults: the reference, see ``RewireSchedule``)."""

    phase_fractions: tuple[float, ...] = _dsr_schedule_fields("phase_fractions")[
        "phase_fractions"]
    period_fractions: tuple[float, ...] = _dsr_schedule_fields("phase_fractions")[
        "period_fractions"]
    stop_fraction: float = _dsr_schedule_fields("phase_fractions")["stop_fraction"]

    def rewire_schedule(self, total_steps: int) -> RewireSchedule:
        return RewireSchedule.scaled(self.phase_fractions, self.period_fractions,
                                     self.stop_fraction, total_steps)


def dsr_temperature(temperatures: Sequence[float], starts: Sequence[int], step: int) -> float:
    """DeepR's temperature at 1-based ``step`` (DSR ``DeepR_temperature_schedule``): the
    value of the phase the 0-based iteration step - 1 is in."""
    return temperatures[piecewise_index(starts, step - 1)]


# --- RigL ------------------------------------------------------------------------------------
def cosine_decay(t: float, total: float) -> float:
    """The cosine factor 0.5 (1 + cos(pi t / T)) at position ``t`` of ``T = total`` (same unit),
    from 1 at t = 0 to 0 at t = T: the one cosine of the project, for the learning rate
    (``bench.recipe.lr_factor``, SGDR without restarts) and RigL's drop fraction. Evaluated as
    pi * (t / T), in that order: the smoke pin's cosine learning rates were trained with it, bit
    for bit."""
    return 0.5 * (1.0 + math.cos(math.pi * (t / total)))


def cosine_drop_fraction(initial: float, global_step: int, begin: int, end: int) -> float:
    """``get_drop_fraction`` with ``drop_fraction_anneal='cosine'``: TF's
    ``cosine_decay(initial, global_step, end - begin)`` = initial / 2 (1 + cos(pi min(t, T) / T)),
    T = end - begin, on the raw global step t (not t - begin, as in the reference)."""
    decay_steps = end - begin
    if decay_steps <= 0:
        return initial
    return initial * cosine_decay(min(global_step, decay_steps), decay_steps)


@dataclass(frozen=True)
class MaskUpdateSchedule:
    """RigL's ``is_mask_update_iter`` on the 0-based global step t (optimizer steps applied
    before this batch): update when begin <= t <= end and last_update + frequency <= t, with
    last_update starting at -frequency; so at begin, begin + frequency, ... up to end."""

    begin: int
    end: int
    frequency: int

    def is_update(self, global_step: int) -> bool:
        return (self.begin <= global_step <= self.end
                and (global_step - self.begin) % self.frequency == 0)
