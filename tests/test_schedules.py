"""methods.schedules: GMP's update steps, RigL's mask updates and cosine drop fraction."""

import math

import pytest

from methods.dsr import DSRHparams
from methods.gmp import GMPHparams
from methods.schedules import (
    DSRScheduleHparams,
    MaskUpdateSchedule,
    PruningSchedule,
    cosine_drop_fraction,
    cubic_sparsity,
    geometric_sparsity,
)
from methods.set_method import SETHparams


def test_gmp_has_no_extra_update_at_the_end_step():
    # Issue 11: 800 steps give begin 164, frequency 8 and a scaled end of 614; TF's schedule
    # updates at 164, 172, ..., 612 and not again at 614. The end lands on that last update.
    hp = GMPHparams()
    sched = PruningSchedule.scaled(hp.begin_fraction, hp.end_fraction, hp.frequency_fraction, 800)
    assert (sched.begin, sched.end, sched.frequency) == (164, 612, 8)
    points = sched.points()
    assert points[0] == 164 and points[-1] == 612 and 614 not in points
    assert points == list(range(164, 613, 8)) == [s for s in range(1, 801)
                                                  if sched.is_update_step(s)]
    # The last update reaches the final sparsity exactly.
    assert cubic_sparsity(612, sched.begin, sched.end, 0.0, 0.9, 3) == 0.9


def test_gmp_first_update_waits_for_one_frequency_as_tf():
    # TF's last_mask_update_step starts at 0: with begin < frequency the first update is at
    # the frequency, not at begin.
    sched = PruningSchedule(begin=3, end=30, frequency=10)
    assert sched.points() == [10, 20, 30]


def test_cubic_is_zhu_and_gupta():
    assert cubic_sparsity(150, 100, 200, 0.0, 0.8, 3) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(50, 100, 200, 0.0, 0.8, 3) == 0.0
    assert cubic_sparsity(100, 100, 100, 0.0, 0.8, 3) == 0.8  # begin == end: jump at begin


def test_geometric_sparsity_keeps_a_constant_fraction_per_update():
    # DSR's ResNet-50 prunes, n = 20 at s = 0.9: density 0.1^(k/20) after prune k.
    for k in (0, 1, 10, 20):
        assert geometric_sparsity(k, 0, 20, 0.0, 0.9) == pytest.approx(1 - 0.1 ** (k / 20))
    # Each update keeps the same fraction, 0.1^(1/20) = 0.891, of what was left.
    kept = [1 - geometric_sparsity(k, 0, 20, 0.0, 0.9) for k in range(21)]
    ratios = {round(kept[k + 1] / kept[k], 12) for k in range(20)}
    assert ratios == {round(0.1 ** 0.05, 12)}
    assert geometric_sparsity(25, 0, 20, 0.0, 0.9) == pytest.approx(0.9)  # held after end
    assert geometric_sparsity(-5, 0, 20, 0.5, 0.9) == pytest.approx(0.5)  # s_i before begin


def test_rigl_cosine_drop_fraction_is_tf_cosine_decay_on_the_raw_step():
    assert cosine_drop_fraction(0.3, 0, 0, 1000) == pytest.approx(0.3)
    assert cosine_drop_fraction(0.3, 250, 0, 1000) == pytest.approx(
        0.15 * (1 + math.cos(math.pi / 4)))
    assert cosine_drop_fraction(0.3, 1000, 0, 1000) == pytest.approx(0.0)
    assert cosine_drop_fraction(0.3, 5000, 0, 1000) == pytest.approx(0.0)
    # Decay steps are end - begin, the step is not shifted by begin (the reference's use).
    assert cosine_drop_fraction(0.3, 600, 100, 1100) == pytest.approx(
        0.15 * (1 + math.cos(math.pi * 600 / 1000)))


def test_rigl_updates_every_frequency_from_begin_to_end():
    sched = MaskUpdateSchedule(begin=0, end=25, frequency=10)
    assert [t for t in range(40) if sched.is_update(t)] == [0, 10, 20]


def test_dsr_schedule_knobs_are_declared_once():
    assert issubclass(DSRHparams, DSRScheduleHparams)
    dsr, set_hp = DSRHparams(), SETHparams()
    # SET keeps its stored dsr_ names; the fields (defaults, checks) are the shared ones.
    for knob in ("phase_fractions", "period_fractions", "stop_fraction"):
        assert getattr(set_hp, f"dsr_{knob}") == getattr(dsr, knob)
        assert (SETHparams.__dataclass_fields__[f"dsr_{knob}"].metadata.keys()
                == DSRHparams.__dataclass_fields__[knob].metadata.keys())
    assert set_hp.rewire_schedule(800) == dsr.rewire_schedule(800)


def test_one_cosine_for_the_learning_rate_and_rigls_drop_fraction():
    from bench.config import TrainConfig
    from bench.recipe import lr_factor
    from methods.schedules import cosine_decay, cosine_drop_fraction

    assert cosine_decay(0, 8) == 1.0 and cosine_decay(8, 8) == 0.0
    assert cosine_decay(2, 8) == 0.5 * (1.0 + math.cos(math.pi * 0.25))
    train = TrainConfig(epochs=8, lr_schedule="cosine")
    assert [lr_factor(train, e) for e in range(8)] == [cosine_decay(e, 8) for e in range(8)]
    assert cosine_drop_fraction(0.3, 2, 0, 8) == 0.3 * cosine_decay(2, 8)
    assert cosine_drop_fraction(0.3, 20, 0, 8) == 0.0
