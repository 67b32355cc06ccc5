"""DeepR: fixed signs, zero crossings go dormant, exact per-layer / global active counts after
every step, the L1 term and noise/temperature schedules of both variants, exact-zero masked
weights and bit-identical resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from bench.errors import UserError
from methods import get_method
from methods.deepr import DeepR, DeepRHparams
from tests import hook_driver
from tests.hook_driver import (
    BATCH,
    SPE,
    X,
    Y,
    assert_masked_zero,
    build,
    resume_matches,
    train,
)


def config(hparams=None, **kwargs):
    return hook_driver.config("deepr", hparams, **kwargs)



DSR = DeepRHparams(variant="dsr")


# --- registry, defaults, labels ---------------------------------------------------------------
def test_registry_defaults_and_labels():
    assert get_method("deepr") is DeepR
    hp = DeepRHparams()
    assert (hp.variant, hp.l1, hp.gdnoise, hp.reconnect_value) == ("paper", 1e-5, 1e-5, 1e-12)
    assert (DSR.dsr_eta, DSR.dsr_temperatures) == (0.01, (1e-5, 1e-8, 1e-12, 1e-15))
    assert DeepR.distributions == ("uniform", "erk", "learned")
    assert DeepR.label(config()) == "deepr"
    assert DeepR.label(config(DSR)) == "deepr-dsr"
    assert DeepR.label(config(distribution="learned")) == "deepr-learned"
    with pytest.raises(UserError):
        DeepR(config(DSR, distribution="learned"), DSR)
    with pytest.raises(UserError):
        DeepR(config(DeepRHparams(variant="nope")), DeepRHparams(variant="nope"))


def counts(masking):
    return {n: int(m.sum()) for n, m in masking.masks.items()}


def per_layer(method, flat_tensor):
    """Split one of the method's flat vectors into {layer: tensor of the layer's shape}."""
    return dict(zip(method.flat.names, method.flat.chunks(flat_tensor), strict=True))


def negative(method):
    return per_layer(method, method.sign < 0)


# --- paper variant ----------------------------------------------------------------------------
def test_signs_fixed_and_counts_restored_every_step():
    cfg = config(lr=0.5, epochs=4)  # a large lr so that many connections die
    model, masking, method, opt = build(cfg)
    targets = counts(masking)
    signs_pos = {n: ~t.clone() for n, t in negative(method).items()}

    def check(step):
        assert counts(masking) == targets
        assert_masked_zero(masking)
        for name, w in masking.weights().items():
            active = masking.masks[name]
            # Every active weight is nonzero with the sign its position was given at init.
            assert torch.equal((w.detach() > 0)[active], signs_pos[name][active])
            assert torch.count_nonzero(w.detach()[active]) == int(active.sum())

    train(model, method, opt, 0, 4 * SPE, check)
    assert method.summary()["reconnected"] > 20


def _zero_lr_optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.0)


def test_zero_crossing_goes_dormant_and_is_replaced_at_epsilon():
    model, masking, method, _ = build(config())
    opt = _zero_lr_optimizer(model)  # lr 0: no noise, so only the crossings below matter
    w = masking.weights()["fc1"]
    mask = masking.masks["fc1"]
    active = torch.nonzero(mask.flatten()).flatten()[:5]
    neg = negative(method)["fc1"].flatten()
    with torch.no_grad():
        flat = w.view(-1)
        # Three cross zero (sign flipped), one lands exactly on zero, one stays (shrinks).
        for i in active[:3]:
            flat[i] = 0.3 if neg[i] else -0.3
        flat[active[3]] = 0.0
        flat[active[4]] = -1e-3 if neg[active[4]] else 1e-3
    before = mask.clone()
    target = int(mask.sum())
    method.after_step(model, opt, 1)
    died = active[:4]
    after = masking.masks["fc1"].flatten()
    assert after[active[4]]
    assert int(after.sum()) == target
    new = after & ~before.flatten()
    revived = after[died]
    # Four reactivated among all dormant positions (the four that just died are candidates too).
    assert int(new.sum()) + int(revived.sum()) == 4
    value = w.detach().flatten()
    reactivated = new.clone()
    reactivated[died] = revived
    expected = torch.where(neg, -1e-12, 1e-12)
    assert torch.equal(value[reactivated], expected[reactivated])
    for i in died:
        assert value[i] == 0.0 or value[i] == expected[i]


def test_paper_noise_is_lr_times_gdnoise_on_theta():
    cfg = config(DeepRHparams(l1=0.0, gdnoise=1e-2))
    model, masking, method, _ = build(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = method.flat.weights().clone()
    g = torch.Generator()
    g.set_state(method.generator.get_state())
    method.after_step(model, opt, 1)
    expected = per_layer(method, before.add_(torch.randn(before.numel(), generator=g),
                                             alpha=0.5 * 1e-2))
    for name, w in masking.weights().items():
        alive = masking.masks[name] & (w.detach().abs() != 1e-12)
        assert int(alive.sum()) > 0
        assert torch.equal(w.detach()[alive], expected[name][alive])


def test_l1_gradient_equals_autograd_of_the_l1_penalty():
    cfg = config(DeepRHparams(l1=1e-3))
    model, masking, method, _ = build(cfg)
    weights = list(masking.weights().values())
    penalty = method.l1_penalty(model)
    assert torch.equal(penalty, 1e-3 * torch.stack([w.abs().sum() for w in weights]).sum())
    assert method.extra_loss(model) is None
    x, y = X[:BATCH], Y[:BATCH]
    # Reference: the penalty in the loss, through autograd, then masked gradients.
    model.zero_grad()
    (F.cross_entropy(model(x), y) + method.l1_penalty(model)).backward()
    expected = {n: w.grad * masking.masks[n] for n, w in masking.weights().items()}
    # DeepR: the loss alone, the penalty's gradient added in after_backward.
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    method.after_backward(model, 1)
    for name, w in masking.weights().items():
        assert torch.equal(w.grad, expected[name]), name
        assert torch.count_nonzero(w.grad[~masking.masks[name]]) == 0


def test_global_constraint_keeps_total_and_moves_counts():
    cfg = config(lr=0.5, epochs=4, distribution="learned")
    model, masking, method, opt = build(cfg)
    start = counts(masking)
    assert start == {"conv": 4, "fc1": 240, "fc2": 16}  # uniform initial densities
    total = sum(start.values())
    seen = []

    def check(step):
        assert sum(counts(masking).values()) == total
        assert_masked_zero(masking)
        seen.append(counts(masking))

    train(model, method, opt, 0, 4 * SPE, check)
    assert any(c != start for c in seen)


# --- dsr variant ------------------------------------------------------------------------------
def test_dsr_temperature_schedule_and_stop_scale_with_run():
    model, masking, method, opt = build(config(DSR, epochs=50))  # 200 steps: the WRN epochs
    assert method.temperature_starts == (0, 25, 80, 140) and method.stop == 190
    assert [method.temperature(s) for s in (1, 25, 26, 80, 81, 140, 141, 200)] == [
        1e-5, 1e-5, 1e-8, 1e-8, 1e-12, 1e-12, 1e-15, 1e-15]
    assert method.rewiring_active(190) and not method.rewiring_active(191)


def test_dsr_gradient_noise_is_sqrt_2_eta_t_on_active_entries():
    model, masking, method, opt = build(config(DeepRHparams(variant="dsr", l1=0.0)))
    x, y = X[:BATCH], Y[:BATCH]
    F.cross_entropy(model(x), y).backward()
    grads = {n: w.grad.clone() * masking.masks[n] for n, w in masking.weights().items()}
    g = torch.Generator()
    g.set_state(method.generator.get_state())
    method.after_backward(model, 1)
    std = math.sqrt(2 * 0.01 * 1e-5)
    mask = method.flat.mask()
    noise = per_layer(method, torch.randn(mask.numel(), generator=g).mul_(mask))
    for name, w in masking.weights().items():
        assert torch.equal(w.grad, grads[name].clone().add_(noise[name], alpha=std))
    # After the stop point nothing is added.
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = {n: w.grad.clone() * masking.masks[n] for n, w in masking.weights().items()}
    method.after_backward(model, method.stop + 1)
    for name, w in masking.weights().items():
        assert torch.equal(w.grad, grads[name])


def test_dsr_sign_flip_prunes_and_regrows_elsewhere_at_zero():
    model, masking, method, _ = build(config(DSR))
    opt = _zero_lr_optimizer(model)
    w = masking.weights()["fc1"]
    mask = masking.masks["fc1"]
    idx = torch.nonzero(mask.flatten()).flatten()[:3]
    with torch.no_grad():
        for i in idx:
            w.view(-1)[i] = -w.view(-1)[i]
    before = mask.clone()
    values = w.detach().clone()
    method.after_step(model, opt, 1)
    after = masking.masks["fc1"]
    flat_after = after.flatten()
    assert not flat_after[idx].any()  # flipped ones pruned
    assert int(after.sum()) == int(before.sum())
    new = after & ~before
    assert int(new.sum()) == 3  # regrown among the previously inactive, at zero
    assert torch.count_nonzero(w.detach()[new]) == 0
    kept = before & after
    assert torch.equal(w.detach()[kept], values[kept])
    # The stored sign is now the flipped one, so the same weights do not count again.
    prev = per_layer(method, method.prev_sign)["fc1"].flatten()
    assert torch.equal(prev[idx], torch.sign(values.flatten()[idx]))


def test_dsr_no_rewiring_after_stop():
    model, masking, method, _ = build(config(DSR))
    opt = _zero_lr_optimizer(model)
    w = masking.weights()["fc1"]
    idx = torch.nonzero(masking.masks["fc1"].flatten()).flatten()[:3]
    with torch.no_grad():
        for i in idx:
            w.view(-1)[i] = -w.view(-1)[i]
    before = masking.masks["fc1"].clone()
    method.after_step(model, opt, method.stop + 1)
    assert torch.equal(masking.masks["fc1"], before)


def test_dsr_counts_kept_per_layer_during_training():
    model, masking, method, opt = build(config(DSR, lr=0.5, epochs=4))
    targets = counts(masking)

    def check(step):
        assert counts(masking) == targets
        assert_masked_zero(masking)

    train(model, method, opt, 0, 4 * SPE, check)
    assert method.summary()["reconnected"] > 0


def test_sync_free_path_keeps_counts_and_signs():
    for hp in (DeepRHparams(), DSR):
        model, masking, method, opt = build(config(hp, lr=0.5, epochs=3))
        method.sync_free = True  # the accelerator path, exercised on CPU
        targets = counts(masking)
        signs_pos = {n: ~t.clone() for n, t in negative(method).items()}

        def check(step, masking=masking, targets=targets, signs_pos=signs_pos, hp=hp):
            assert counts(masking) == targets
            assert_masked_zero(masking)
            if hp.variant == "paper":
                for name, w in masking.weights().items():
                    active = masking.masks[name]
                    assert torch.equal((w.detach() > 0)[active], signs_pos[name][active])

        train(model, method, opt, 0, 3 * SPE, check)
        assert method.summary()["reconnected"] > 0


# --- invariants -------------------------------------------------------------------------------
def test_resume_is_bit_identical():
    for hp, dist in ((DeepRHparams(), "default"), (DSR, "default"),
                     (DeepRHparams(), "learned")):
        a, c = resume_matches(config(hp, lr=0.5, epochs=4, distribution=dist), k=7)
        assert a.summary() == c.summary()


# --- the shared vector helpers ----------------------------------------------------------------
def test_flat_layers_see_masks_changed_behind_their_back():
    from methods.masking import FlatLayers

    model, masking, method, _ = build(config())
    flat = FlatLayers(masking, list(masking.layers))
    before = flat.mask().clone()
    assert flat.counts() == [4, 240, 16]
    new_mask = torch.zeros_like(masking.masks["fc2"])
    new_mask.view(-1)[:3] = True
    masking.set_mask("fc2", new_mask)  # e.g. a checkpoint restored after setup
    assert flat.counts() == [4, 240, 3]
    assert torch.equal(flat.mask()[:-80], before[:-80])
    assert torch.equal(flat.mask()[-80:], new_mask.flatten().float())
    with torch.no_grad():
        for w in masking.weights().values():
            w.fill_(1.0)
    flat.apply()
    assert_masked_zero(masking)
    assert int(masking.weights()["fc2"].detach().sum()) == 3


def test_sampling_in_segments_is_exact_and_uniform():
    # The one per-layer random choice (rewiring.segmented_random_choice), on every device and
    # through DeepR's CPU bookkeeping (_choose, which lists the positions per layer).
    from methods.masking import FlatLayers
    from methods.rewiring import segmented_random_choice

    model, masking, method, _ = build(config())
    flat = FlatLayers(masking, list(masking.layers))
    method.flat = flat
    method.rng = SimpleNamespace(generator=torch.Generator().manual_seed(0))
    candidates = flat.mask() == 0
    hits = torch.zeros(flat.total)
    for _ in range(300):
        chosen = method._choose(candidates, [2, 30, 64])
        for i, got in chosen.items():
            assert len(got) == len(set(got)) == [2, 30, 64][i]
            lo, hi = flat.starts[i], flat.starts[i] + flat.sizes[i]
            assert all(lo <= d < hi and candidates[d] for d in got)
            hits[got] += 1
        new = segmented_random_choice(flat, candidates, torch.tensor([2, 30, 64]),
                                      method.rng.generator)
        assert flat.segment_sums(new.long()).tolist() == [2, 30, 64]
        assert not (new & ~candidates).any()
    # fc2 has 64 candidates and asks for all 64: every one, every time.
    assert torch.equal(hits[-80:][candidates[-80:]], torch.full((64,), 300.0))
    # fc1: 30 of 960 candidates per draw -> each hit ~Poisson(9.4) times: none left out
    # (expected 0.08 of 960) and none far above (the max of 960 such draws is about 20).
    fc1 = hits[18:1218][candidates[18:1218]]
    assert fc1.sum() == 300 * 30
    assert int((fc1 == 0).sum()) <= 2 and float(fc1.max()) <= 24
    # A layer with fewer candidates than asked grows what it has (DSR's grow_random).
    few = method._choose(candidates, [0, 0, 70])
    assert sorted(few) == [2] and len(few[2]) == 64
