"""SET: the Keras reference's sign-split removal counts, random regrowth at zero, constant
nonzero count, optimizer state of rewired positions, the DSR-run variant, exact-zero masked
weights and bit-identical resume."""

from __future__ import annotations

import numpy as np
import torch

from methods import get_method
from methods.set_method import SET, SETHparams, keras_keep_counts
from tests import hook_driver
from tests.hook_driver import (
    SPE,
    assert_masked_zero,
    build,
    resume_matches,
    train,
)


def config(hparams=None, **kwargs):
    return hook_driver.config("set", hparams, **kwargs)



# --- registry, defaults, labels ---------------------------------------------------------------
def test_registry_defaults_and_labels():
    assert get_method("set") is SET
    hp = SETHparams()
    assert hp.variant == "paper" and hp.zeta == 0.3
    assert SET.label(config()) == "set"
    assert SET.label(config(distribution="erk")) == "set"
    assert SET.label(config(distribution="uniform")) == "set-uniform"
    assert SET.label(config(SETHparams(variant="dsr"))) == "set-dsr"
    assert SET.label(config(SETHparams(variant="dsr"), distribution="uniform")) == "set-dsr"
    assert SET.label(config(SETHparams(variant="dsr"), distribution="erk")) == "set-dsr-erk"


def test_default_topology_is_erdos_renyi_and_dsr_variant_uniform():
    _, masking, _, _ = build(config())
    # ERK at 80%: the conv layer's raw density exceeds 1 so it is dense; eps solved on the rest.
    counts = masking.nonzero()
    assert counts["conv"] == 18
    # RigL's budget: (1200 - 960) + (80 - 64) - floor(0.8 * 18) = 242 for fc1 and fc2, eps =
    # 242 / (80 + 24); each layer keeps N - floor((1 - eps raw) N): 187 and 56.
    assert counts == {"conv": 18, "fc1": 187, "fc2": 56}
    _, masking, _, _ = build(config(SETHparams(variant="dsr")))
    assert masking.nonzero() == {"conv": 4, "fc1": 240, "fc2": 16}


# --- the Keras rule ---------------------------------------------------------------------------
def keras_core(weights: np.ndarray, zeta: float) -> np.ndarray:
    """A line-by-line transliteration of ``rewireMask``'s pruning (set_mlp_keras_cifar10.py)."""
    values = np.sort(weights.ravel())
    first_zero_pos = (np.abs(values - 0)).argmin()
    last_zero_pos = values.shape[0] - (np.abs(values - 0))[::-1].argmin()
    largest_negative = values[int((1 - zeta) * first_zero_pos)]
    smallest_positive = values[int(min(values.shape[0] - 1,
                                       last_zero_pos + zeta * (values.shape[0] - last_zero_pos)))]
    return (weights > smallest_positive) | (weights < largest_negative)


def _layout(masking, name, values, positions):
    w = masking.weights()[name]
    flat = torch.zeros(w.numel())
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    flat[positions] = torch.tensor(values, dtype=torch.float32)
    mask[positions] = True
    with torch.no_grad():
        w.copy_(flat.view_as(w))
    masking.set_mask(name, mask.view_as(w))


def _random_layout(masking, name, n_active, n_neg, n_zero, seed):
    g = torch.Generator().manual_seed(seed)
    numel = masking.weights()[name].numel()
    positions = torch.randperm(numel, generator=g)[:n_active]
    mags = torch.rand(n_active, generator=g) + 0.01
    values = torch.cat([-mags[:n_neg], mags[n_neg:n_active - n_zero],
                        torch.zeros(n_zero)]).tolist()
    _layout(masking, name, values, positions)


def test_keep_counts_match_transliterated_reference():
    for n_neg, n_pos, numel in [(10, 10, 100), (7, 13, 50), (0, 5, 20), (5, 0, 20), (1, 1, 9),
                                (3, 1, 9), (33, 41, 1200), (100, 140, 1200)]:
        g = torch.Generator().manual_seed(n_neg * 1000 + n_pos)
        vals = np.zeros(numel)
        mags = (torch.rand(n_neg + n_pos, generator=g).numpy() + 0.01)
        vals[:n_neg] = -mags[:n_neg]
        vals[n_neg:n_neg + n_pos] = mags[n_neg:]
        core = keras_core(vals, 0.3)
        keep_neg, keep_pos = keras_keep_counts(n_neg, n_pos, numel, 0.3)
        assert int((core & (vals < 0)).sum()) == keep_neg
        assert int((core & (vals > 0)).sum()) == keep_pos


def test_rewire_removes_exactly_the_reference_set_and_regrows_at_zero():
    model, masking, method, opt = build(config(SETHparams(zeta=0.3)))
    # fc1: 240 connections with 100 negatives, 130 positives and 10 active exact zeros;
    # fc2: 16 with 9 negatives, 7 positives. conv is dense (ERK) and left alone.
    _random_layout(masking, "fc1", 240, 100, 10, seed=1)
    _random_layout(masking, "fc2", 16, 9, 0, seed=2)
    method.targets = {"conv": 18, "fc1": 240, "fc2": 16}
    before = {n: w.detach().clone() for n, w in masking.weights().items()}
    old_masks = {n: m.clone() for n, m in masking.masks.items()}
    report = method.rewire_paper(opt)
    assert "conv" not in report
    for name in ("fc1", "fc2"):
        w = masking.weights()[name].detach()
        core = torch.from_numpy(keras_core(before[name].double().numpy(), 0.3))
        kept = masking.masks[name] & (w != 0)
        assert torch.equal(kept, core), name
        assert torch.equal(w[core], before[name][core])  # survivors untouched
        new = masking.masks[name] & ~core
        assert torch.count_nonzero(w[new]) == 0  # new weights start at zero
        assert int(masking.masks[name].sum()) == method.targets[name]  # count constant
        assert report[name] == (int(old_masks[name].sum()) - int(core.sum()),
                                method.targets[name] - int(core.sum()))
    # fc1: negatives keep int(0.7 * 100) = 70, positives drop int(0.3 * 130) + 1 = 40, zeros go.
    assert report["fc1"] == (240 - 70 - 90, 240 - 70 - 90)
    assert torch.equal(masking.masks["conv"], old_masks["conv"])


def test_regrowth_is_uniform_over_empty_positions_including_just_pruned():
    model, masking, method, opt = build(config())
    method.targets = {**method.targets, "fc1": 240}
    pruned_total = regrown_pruned = 0
    for seed in range(40):
        _random_layout(masking, "fc1", 240, 120, 0, seed=seed)
        old = masking.masks["fc1"].clone()
        method.rewire_paper(None)
        w = masking.weights()["fc1"].detach()
        kept = masking.masks["fc1"] & (w != 0)
        pruned = old & ~kept
        assert int(kept.sum()) == 167  # int(0.7 * 120) + (120 - int(0.3 * 120) - 1)
        assert int(masking.masks["fc1"].sum()) == 240
        pruned_total += int(pruned.sum())
        regrown_pruned += int((pruned & masking.masks["fc1"]).sum())
    # Each rewiring regrows 73 of the 1200 - 167 = 1033 empty slots (p = 0.0707), just-pruned
    # ones included: about 0.0707 * 2920 = 206 of the 2920 pruned slots come back (sd ~14);
    # a rule that excluded them would give 0.
    assert pruned_total == 73 * 40
    assert 150 < regrown_pruned < 265


def test_optimizer_state_zeroed_where_not_kept():
    model, masking, method, opt = build(config())
    train(model, method, opt, 0, 2)
    w = masking.weights()["fc1"]
    buf_before = opt.state[w]["momentum_buffer"].clone()
    old = masking.masks["fc1"].clone()
    method.rewire_paper(opt)
    keep = old & masking.masks["fc1"] & (w.detach() != 0)
    buf = opt.state[w]["momentum_buffer"]
    assert torch.count_nonzero(buf[~keep]) == 0
    assert torch.equal(buf[keep], buf_before[keep])


def test_paper_rewires_after_every_epoch_but_the_last():
    cfg = config(epochs=3)
    model, masking, method, opt = build(cfg)
    counts = {n: int(m.sum()) for n, m in masking.masks.items()}
    epochs_seen = []

    def check(step):
        assert {n: int(m.sum()) for n, m in masking.masks.items()} == counts
        assert_masked_zero(masking)
        epochs_seen.append(method.rewirings)

    train(model, method, opt, 0, 3 * SPE, check)
    assert method.rewirings == 2
    assert epochs_seen[SPE - 1] == 1 and epochs_seen[2 * SPE - 1] == 2 and epochs_seen[-1] == 2


# --- the DSR-run variant ----------------------------------------------------------------------
def test_dsr_variant_prunes_smallest_magnitudes_without_sign_split():
    cfg = config(SETHparams(variant="dsr"))
    model, masking, method, opt = build(cfg)
    train(model, method, opt, 0, 1)
    assert method.dsr_zeta == SETHparams().dsr_prune_fraction / (1 - 0.8)
    values = {n: w.detach().clone() for n, w in masking.weights().items()}
    old = {n: m.clone() for n, m in masking.masks.items()}
    momentum = {n: opt.state[w]["momentum_buffer"].clone() for n, w in masking.weights().items()}
    report = method.rewire_dsr()
    for name, w in masking.weights().items():
        n_active = int(old[name].sum())
        n = int(method.dsr_zeta * n_active) + 1
        mags = values[name].abs()[old[name]]
        order = torch.sort(mags).values
        removed = old[name] & ~masking.masks[name]
        assert int(removed.sum()) == n == report[name][0]
        # The removed ones are the n smallest magnitudes.
        assert values[name].abs()[removed].max() <= order[n]
        new = masking.masks[name] & ~old[name]
        assert int(new.sum()) == n  # regrown among previously inactive positions only
        assert torch.count_nonzero(w.detach()[new]) == 0
        assert int(masking.masks[name].sum()) == n_active
        assert torch.equal(opt.state[w]["momentum_buffer"], momentum[name])


def test_dsr_variant_zeta_reproduces_dsr_table():
    frac = SETHparams().dsr_prune_fraction
    for density, zeta in ((0.1, 0.138), (0.2, 0.07), (0.3, 0.046), (0.4, 0.034), (0.5, 0.028)):
        assert abs(frac / density - zeta) < 0.0015


def test_dsr_variant_rewires_on_schedule_only():
    cfg = config(SETHparams(variant="dsr", dsr_period_fractions=(0.25,) * 4,
                            dsr_stop_fraction=0.75), epochs=4)
    model, masking, method, opt = build(cfg)
    steps = []
    counts = masking.nonzero()

    def check(step):
        if method.rewirings > len(steps):
            steps.append(step)
        assert masking.nonzero() == counts
        assert_masked_zero(masking)

    train(model, method, opt, 0, 16, check)
    assert steps == [5, 9]


# --- invariants -------------------------------------------------------------------------------
def test_masked_weights_stay_zero_with_momentum_and_weight_decay():
    for hp in (SETHparams(), SETHparams(variant="dsr")):
        model, masking, method, opt = build(config(hp, epochs=4))
        check = (lambda m: lambda step: assert_masked_zero(m))(masking)
        train(model, method, opt, 0, 4 * SPE, check)
        assert method.rewirings > 0


def test_resume_is_bit_identical():
    for hp, k in ((SETHparams(), 6), (SETHparams(variant="dsr"), 7)):
        a, c = resume_matches(config(hp, epochs=4), k=k)
        assert a.summary() == c.summary()
