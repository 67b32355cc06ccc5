"""SNIP: connection sensitivity against finite differences, exact kept counts, layer policy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bench.config import MethodConfig, RunConfig, SparsityConfig
from bench.models.mnist1d import MNIST1DCNN, MNIST1DMLP
from methods.base import SetupContext
from methods.masking import Masking, kept_count, layer_densities
from methods.snip import SNIP, SNIPHparams, snip_kept_count, snip_scores, take_examples


def make_ctx(model, target=0.9, policy="all", hparams=None, data=None, distribution="default",
             resuming=False, batch_size=50):
    config = RunConfig(method=MethodConfig("snip", hparams or SNIPHparams()),
                       sparsity=SparsityConfig(target=target, layer_policy=policy,
                                               distribution=distribution))
    x, y = data if data is not None else toy_data()
    masking = Masking.attach(model, policy)
    method = SNIP(config, config.method.hparams)

    def batches():
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]

    ctx = SetupContext(model=model, masking=masking, config=config, loss_fn=F.cross_entropy,
                       batches=batches, steps_per_epoch=1, device=torch.device("cpu"),
                       generator=method.generator, resuming=resuming)
    return method, ctx


def toy_data(n=300, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, length, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_scores_equal_finite_difference_of_the_loss_in_the_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6, 4))
    model = model.double()
    layers = {"0": model[0], "3": model[3]}
    x = torch.randn(7, 1, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (7,))
    scores = snip_scores(model, layers, [(x, y)], F.cross_entropy)
    params = dict(model.named_parameters())
    eps = 1e-6
    for name, module in layers.items():
        w = module.weight.detach()
        fd = torch.zeros_like(w)
        for idx in range(w.numel()):
            # L(c * w) with c = 1 except c_j = 1 +- eps
            losses = []
            for sign in (1.0, -1.0):
                c = torch.ones(w.numel(), dtype=w.dtype)
                c[idx] += sign * eps
                p = {**params, f"{name}.weight": w * c.view_as(w)}
                losses.append(F.cross_entropy(functional_call(model, p, (x,)), y))
            fd.view(-1)[idx] = (losses[0] - losses[1]) / (2 * eps)
        torch.testing.assert_close(scores[name], fd.abs(), rtol=1e-6, atol=1e-9)


def test_several_batches_average_the_sensitivity():
    torch.manual_seed(1)
    model = MNIST1DMLP()
    layers = {"linear1": model.linear1, "linear2": model.linear2}
    x, y = toy_data(40)
    two = snip_scores(model, layers, [(x[:20], y[:20]), (x[20:], y[20:])], F.cross_entropy)
    w = model.linear2.weight
    g = sum(torch.autograd.grad(F.cross_entropy(model(x[i : i + 20]), y[i : i + 20]), w)[0]
            for i in (0, 20))
    torch.testing.assert_close(two["linear2"], (w.detach() * g / 2).abs())


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_exactly_k_survive_and_they_are_the_top_scores(target):
    torch.manual_seed(2)
    model = MNIST1DCNN()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method, ctx = make_ctx(model, target, hparams=SNIPHparams(batch_size=64,
                                                              independent_init=False))
    method.setup(ctx)
    masks = ctx.masking.masks
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    # snip-public's kappa = int(round(N (1 - s))) of N = 5125: 2562 at 0.5 (2562.5 rounds to
    # even) and 512 at 0.9 (512.4999...), where N - floor(s N) keeps 2563 and 513.
    assert kept == int(round(total * (1 - target))) == {0.5: 2562, 0.9: 512, 0.98: 103}[target]
    for name, module in ctx.masking.layers.items():
        assert torch.equal(module.weight != 0, masks[name] & (before[f"{name}.weight"] != 0))
    # Brute force: the global score threshold separates kept from pruned.
    model2 = MNIST1DCNN()
    model2.load_state_dict({k: v for k, v in before.items()})
    x, y = take_examples(ctx.batches, 64)
    w = [getattr(model2, n).weight for n in ctx.masking.layers]
    model2.eval()
    grads = torch.autograd.grad(F.cross_entropy(model2(x), y), w)
    flat = torch.cat([(wi * gi).abs().flatten() for wi, gi in zip(w, grads, strict=True)])
    flat_mask = torch.cat([m.flatten() for m in masks.values()])
    assert flat[flat_mask].min() >= flat[~flat_mask].max()


def test_batch_size_is_taken_from_the_stream_not_the_loader():
    x, y = toy_data(300)
    method, ctx = make_ctx(MNIST1DCNN(), hparams=SNIPHparams(batch_size=130), batch_size=50)
    bx, by = take_examples(ctx.batches, 130)
    assert torch.equal(bx, x[:130]) and torch.equal(by, y[:130])
    # More than the data holds cycles back to the start.
    bx, _ = take_examples(ctx.batches, 310)
    assert torch.equal(bx[300:], x[:10])


@pytest.mark.parametrize("policy", ["dense_first", "dense_last", "dense_first_last"])
def test_layer_policy_keeps_the_dense_layers_whole(policy):
    torch.manual_seed(3)
    model = MNIST1DCNN()
    method, ctx = make_ctx(model, 0.95, policy)
    method.setup(ctx)
    prunable = set(ctx.masking.layers)
    expected = {"dense_first": {"conv2", "conv3", "linear"},
                "dense_last": {"conv1", "conv2", "conv3"},
                "dense_first_last": {"conv2", "conv3"}}[policy]
    assert prunable == expected
    for name in {"conv1", "conv2", "conv3", "linear"} - prunable:
        module = getattr(model, name)
        assert not hasattr(module, "weight_mask")
        assert bool((module.weight != 0).all())
    total = sum(m.weight.numel() for m in ctx.masking.layers.values())
    assert sum(ctx.masking.nonzero().values()) == int(round(total * 0.05))


def test_global_count_is_snip_publics_rounding():
    # Issue 11: 86 of 864 at s = 0.9 (864 * 0.1 = 86.4 rounds down), not 864 - 777 = 87.
    assert snip_kept_count(864, 1 - 0.9) == 86
    assert snip_kept_count(5210, 1 - 0.98) == 104
    assert snip_kept_count(10, 1 - 0.75) == 2  # 2.5 rounds half to even, as Python's round


def test_independent_init_scores_a_redrawn_copy_and_keeps_the_trained_weights():
    torch.manual_seed(4)
    model = MNIST1DCNN()
    own = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    method, ctx = make_ctx(model, 0.8)
    method.setup(ctx)
    assert torch.equal(torch.get_rng_state(), rng)
    for name, p in model.named_parameters():
        mask = getattr(model, name.rsplit(".", 1)[0]).weight_mask if name.endswith("weight") \
            else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach(), own[name] * mask)
    # The same setup on the model's own weights gives a different mask: the copy was redrawn.
    torch.manual_seed(4)
    same = MNIST1DCNN()
    method2, ctx2 = make_ctx(same, 0.8, hparams=SNIPHparams(independent_init=False))
    method2.setup(ctx2)
    assert any(not torch.equal(a, b) for a, b in
               zip(ctx.masking.masks.values(), ctx2.masking.masks.values(), strict=True))
    # And it is reproducible from the method's generator.
    torch.manual_seed(4)
    again = MNIST1DCNN()
    method3, ctx3 = make_ctx(again, 0.8)
    method3.setup(ctx3)
    for a, b in zip(ctx.masking.masks.values(), ctx3.masking.masks.values(), strict=True):
        assert torch.equal(a, b)


def test_uniform_distribution_is_per_layer_top_k():
    torch.manual_seed(5)
    model = MNIST1DCNN()
    method, ctx = make_ctx(model, 0.9, distribution="uniform")
    method.setup(ctx)
    for mask in ctx.masking.masks.values():
        assert int(mask.sum()) == kept_count(mask.numel(), 0.1)
    method, ctx = make_ctx(MNIST1DCNN(), 0.9, distribution="erk")
    method.setup(ctx)
    dens = layer_densities(ctx.masking.shapes(), 0.1, "erk")
    for name, mask in ctx.masking.masks.items():
        assert int(mask.sum()) == kept_count(mask.numel(), dens[name])


def test_resuming_skips_scoring_and_masks_stay_fixed_in_training():
    model = MNIST1DCNN()
    method, ctx = make_ctx(model, 0.9, resuming=True)
    method.setup(ctx)
    assert all(bool(m.all()) for m in ctx.masking.masks.values())
    method, ctx = make_ctx(MNIST1DCNN(), 0.9)
    method.setup(ctx)
    opt = torch.optim.SGD(ctx.model.parameters(), lr=0.1, momentum=0.9)
    x, y = toy_data(50)
    for step in (1, 2):
        opt.zero_grad()
        F.cross_entropy(ctx.model(x), y).backward()
        method.after_backward(ctx.model, step)
        opt.step()
        method.after_step(ctx.model, opt, step)
    for module in ctx.masking.layers.values():
        assert not bool(module.weight[~module.weight_mask].any())
