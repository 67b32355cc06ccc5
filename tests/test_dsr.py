"""DSR: one global adaptive threshold, proportional regrowth with an exact total, the DSR rewire
schedule scaled to the run, exact-zero masked weights and bit-identical resume."""

from __future__ import annotations

import pytest
import torch

from methods import get_method
from methods.dsr import DSR, DSRHparams, adjust_threshold, allocation_round
from methods.schedules import RewireSchedule
from tests import hook_driver
from tests.hook_driver import (
    SPE,
    assert_masked_zero,
    build,
    resume_matches,
    train,
)


def config(hparams=None, **kwargs):
    return hook_driver.config("dsr", hparams, **kwargs)


# --- registry, distribution, label ------------------------------------------------------------
def test_registry_and_distribution():
    assert get_method("dsr") is DSR
    assert DSR.default_distribution == "learned"
    assert DSR.distributions == ("learned",)
    assert DSR.label(config()) == "dsr"
    hp = DSRHparams()
    assert hp.delta == 0.1 and hp.initial_threshold == 1e-3
    assert hp.n_prune_fraction == 20000 / 1451520
    assert hp.stop_fraction == 0.95


def test_initial_masks_are_uniform_per_layer():
    _, masking, _, _ = build(config(sparsity=0.8))
    # kept_count = numel - floor(0.8 * numel) per layer
    assert masking.nonzero() == {"conv": 18 - 14, "fc1": 1200 - 960, "fc2": 80 - 64}


# --- threshold ---------------------------------------------------------------------------------
def test_adjust_threshold_halves_doubles_or_keeps():
    assert adjust_threshold(1e-3, 111, 100, 0.1) == 5e-4
    assert adjust_threshold(1e-3, 110, 100, 0.1) == 1e-3
    assert adjust_threshold(1e-3, 90, 100, 0.1) == 1e-3
    assert adjust_threshold(1e-3, 89, 100, 0.1) == 2e-3


def _set_layer(masking, name, values):
    """Give a layer an exact weight layout: `values` (flat) on its first positions, mask there."""
    w = masking.weights()[name]
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    flat = torch.zeros(w.numel())
    flat[: len(values)] = torch.tensor(values)
    mask[: len(values)] = True
    with torch.no_grad():
        w.copy_(flat.view_as(w))
    masking.set_mask(name, mask.view_as(w))


def _layout(method, masking, conv, fc1, fc2):
    _set_layer(masking, "conv", conv)
    _set_layer(masking, "fc1", fc1)
    _set_layer(masking, "fc2", fc2)


def test_one_global_threshold_prunes_below_h_in_every_layer():
    _, masking, method, _ = build(config())
    method.threshold = 0.05
    method.n_prune_target = 6
    conv = [0.01, -0.02, 0.3, -0.4]                  # 2 below H
    fc1 = [0.04, -0.049, 0.051, 0.5] + [1.0] * 36    # 2 below H, 38 survive
    fc2 = [-0.06, 0.07, 0.001, 0.9]                  # 1 below H
    _layout(method, masking, conv, fc1, fc2)
    before = {n: m.clone() for n, m in masking.masks.items()}
    values = {n: w.detach().clone() for n, w in masking.weights().items()}
    report = method.reallocate()
    assert {n: p for n, (p, _) in report.items()} == {"conv": 2, "fc1": 2, "fc2": 1}
    for name, w in masking.weights().items():
        survivors = before[name] & masking.masks[name]
        assert torch.equal(survivors, before[name] & (values[name].abs() >= 0.05))
        assert torch.equal(w.detach()[survivors], values[name][survivors])
    assert sum(g for _, g in report.values()) == 5
    assert sum(masking.nonzero().values()) == 4 + 40 + 4
    # 5 pruned < (1 - 0.1) * 6, so H doubles for the next reallocation.
    assert method.threshold == 0.1


def test_threshold_tracks_n_p_within_delta():
    _, masking, method, _ = build(config())
    conv = [0.01, -0.02, 0.3, -0.4]
    fc1 = [0.04, -0.049, 0.051, 0.5] + [1.0] * 36
    fc2 = [-0.06, 0.07, 0.001, 0.9]
    for target, expected in ((5, 0.05), (4, 0.025), (6, 0.1)):
        _layout(method, masking, conv, fc1, fc2)
        method.threshold = 0.05
        method.n_prune_target = target
        method.reallocate()
        assert method.threshold == expected, target


def test_layer_keeps_its_first_weight_when_all_are_below_h():
    _, masking, method, _ = build(config())
    method.threshold = 0.5
    _layout(method, masking, [0.1, -0.2, 0.3, -0.4], [1.0] * 40, [2.0] * 4)
    report = method.reallocate()
    assert report["conv"][0] == 3
    w = masking.weights()["conv"].detach().flatten()
    # The first active position (flat index 0) survives with its value.
    assert w[0] == pytest.approx(0.1) and masking.masks["conv"].flatten()[0]


# --- regrowth ---------------------------------------------------------------------------------
def test_regrowth_in_proportion_to_survivors_exact_total():
    _, masking, method, opt = build(config())
    method.threshold = 0.05
    # survivors R = (2, 30, 8) of 40; pruned 2 + 4 + 2 = 8 -> shares 0.05/0.75/0.2 -> 0.4/6/1.6
    # round -> 0/6/2 = 8: no discrepancy, so the split is deterministic.
    conv = [0.01, 0.02, 0.3, 0.4]
    fc1 = [0.01, 0.02, 0.03, 0.04] + [1.0] * 30
    fc2 = [0.01, 0.02] + [1.0] * 8
    _layout(method, masking, conv, fc1, fc2)
    before = {n: m.clone() for n, m in masking.masks.items()}
    report = method.reallocate()
    assert report == {"conv": (2, 0), "fc1": (4, 6), "fc2": (2, 2)}
    assert masking.nonzero() == {"conv": 2, "fc1": 36, "fc2": 10}
    for name, w in masking.weights().items():
        new = masking.masks[name] & ~before[name]
        # New weights start at 0 and never sit on a position the layer just pruned.
        assert torch.count_nonzero(w.detach()[new]) == 0
        assert not (new & before[name]).any()


def test_allocation_round_matches_numpy_rounding_and_fixes_discrepancy():
    g = torch.Generator().manual_seed(0)
    # 0.5, 1.5, 2.0 round half to even -> 0, 2, 2: sums to 4, no random fix-up.
    assert allocation_round([0.125, 0.375, 0.5], 4, g) == [0, 2, 2]
    # 3.33 each -> 3, 3, 3 and the missing one goes to one random layer.
    counts = allocation_round([1 / 3, 1 / 3, 1 / 3], 10, g)
    assert sum(counts) == 10 and sorted(counts) == [3, 3, 4]
    # An excess is taken from one random layer, clamped at zero.
    counts = allocation_round([0.5, 0.5], 1, g)  # 0.5, 0.5 -> 0, 0 -> +1 somewhere
    assert sorted(counts) == [0, 1]


def test_regrowth_total_exact_over_training():
    cfg = config(DSRHparams(n_prune_fraction=0.02), epochs=4)
    model, masking, method, opt = build(cfg)
    total = sum(masking.nonzero().values())
    seen = []

    def check(step):
        assert sum(masking.nonzero().values()) == total
        assert_masked_zero(masking)
        seen.append(dict(masking.nonzero()))

    train(model, method, opt, 0, 4 * SPE, check)
    assert method.reallocations == len(method.schedule.points(4 * SPE))
    # Densities are learned: at least one layer's count moved.
    assert any(s != seen[0] for s in seen)


def test_momentum_is_not_reset_for_regrown_weights():
    model, masking, method, opt = build(config())
    train(model, method, opt, 0, 2)
    method.threshold = 10.0  # prune everything but one weight per layer
    momentum = {n: opt.state[w]["momentum_buffer"].clone()
                for n, w in masking.weights().items()}
    before = {n: m.clone() for n, m in masking.masks.items()}
    method.reallocate()
    for name, w in masking.weights().items():
        assert torch.equal(opt.state[w]["momentum_buffer"], momentum[name])
        new = masking.masks[name] & ~before[name]
        assert torch.count_nonzero(w.detach()[new]) == 0


# --- schedule ---------------------------------------------------------------------------------
def _reference_rewire_iterations(steps_per_epoch, epochs, stop_epoch):
    """main.py: rewire after global batch it when it != 0, it % period(epoch) == 0, epoch < stop."""
    schedule = [(0, 100), (25, 200), (80, 400), (140, 800)]
    out = []
    for it in range(steps_per_epoch * epochs):
        epoch = it // steps_per_epoch
        period = [p for e, p in schedule if e <= epoch][-1]
        if it != 0 and it % period == 0 and epoch < stop_epoch:
            out.append(it + 1)  # as a 1-based step count
    return out


def test_schedule_at_reference_length_is_the_reference():
    hp = DSRHparams()
    total = 200 * 500
    sched = RewireSchedule.scaled(hp.phase_fractions, hp.period_fractions, hp.stop_fraction,
                                  total)
    assert sched.starts == (0, 12500, 40000, 70000)
    assert sched.periods == (100, 200, 400, 800)
    assert sched.stop == 95000
    assert sched.points(total) == _reference_rewire_iterations(500, 200, 190)


def test_schedule_scales_with_run_length():
    hp = DSRHparams()
    sched = RewireSchedule.scaled(hp.phase_fractions, hp.period_fractions, hp.stop_fraction, 800)
    assert sched.starts == (0, 100, 320, 560)
    assert sched.periods == (1, 2, 3, 6)
    assert sched.stop == 760
    pts = sched.points(800)
    assert pts[0] == 2 and pts[-1] == 757  # it = 756 is the last multiple of 6 below 760
    assert all(p - 1 < 760 for p in pts)


def test_reallocations_happen_on_schedule_and_stop():
    cfg = config(DSRHparams(period_fractions=(0.25,) * 4, stop_fraction=0.75), epochs=4)
    model, masking, method, opt = build(cfg)
    steps = []

    def check(step):
        if method.reallocations > len(steps):
            steps.append(step)

    train(model, method, opt, 0, 16, check)
    # 16 steps: period 4, stop at iteration 12 -> iterations 4 and 8 -> after steps 5 and 9.
    assert steps == [5, 9]


# --- invariants -------------------------------------------------------------------------------
def test_masked_weights_stay_zero_with_momentum_and_weight_decay():
    model, masking, method, opt = build(config(DSRHparams(n_prune_fraction=0.03), epochs=3))
    train(model, method, opt, 0, 3 * SPE, lambda step: assert_masked_zero(masking))


def test_resume_is_bit_identical():
    cfg = config(DSRHparams(n_prune_fraction=0.03), epochs=4)
    a, c = resume_matches(cfg, k=7)
    assert a.threshold == c.threshold
    assert a.reallocations == c.reallocations
    assert a.summary() == c.summary()


def test_regrowth_terminates_when_a_full_layer_holds_most_of_the_share():
    # conv is full and loses nothing; fc1 loses 1 weight. The share of conv (18 of 22
    # survivors) rounds to the whole single regrowth, which the reference would retry forever.
    _, masking, method, _ = build(config())
    method.threshold = 0.05
    _layout(method, masking, [1.0] * 18, [0.01] + [1.0] * 2, [1.0] * 2)
    report = method.reallocate()
    assert report["conv"] == (0, 0)
    assert report["fc1"][0] == 1
    assert sum(g for _, g in report.values()) == 1
    assert sum(masking.nonzero().values()) == 18 + 3 + 2
