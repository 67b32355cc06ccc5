"""GraSP: the Hessian-gradient product against an explicit Hessian, the sign convention on a
case solved by hand, per-class data fetching, and exact global pruning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian
from torch.func import functional_call, grad, jvp

from bench.config import MethodConfig, RunConfig, SparsityConfig
from bench.models.mnist1d import MNIST1DCNN
from methods.base import SetupContext
from methods.grasp import (
    GraSP,
    GraSPHparams,
    fetch_per_class,
    gradient_and_hessian_gradient,
    grasp_scores,
    keep_at_most_threshold,
    passes,
    reference_init,
)
from methods.masking import Masking

T = 200.0


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4, 3),
                         nn.Tanh(), nn.Linear(3, 3)).double()


@pytest.mark.parametrize("temperature", [1.0, T])
def test_hessian_gradient_product_equals_explicit_hessian_times_g(temperature):
    model = tiny_net()
    names = ["0.weight", "3.weight", "5.weight"]
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    g0 = torch.Generator().manual_seed(1)
    halves = [(torch.randn(5, 1, 6, generator=g0, dtype=torch.float64),
               torch.randint(0, 3, (5,), generator=g0)) for _ in range(2)]
    g, hg = gradient_and_hessian_gradient(model, weights, halves, F.cross_entropy, temperature)

    sizes = [w.numel() for w in weights]
    theta = torch.cat([w.detach().flatten() for w in weights])

    def total_loss(flat):
        parts = dict(params)
        for name, piece, w in zip(names, flat.split(sizes), weights, strict=True):
            parts[name] = piece.view_as(w)
        return sum(F.cross_entropy(functional_call(model, parts, (x,)) / temperature, y)
                   for x, y in halves)

    H = hessian(total_loss, theta)
    g_flat = torch.autograd.functional.jacobian(total_loss, theta)
    torch.testing.assert_close(torch.cat([t.flatten() for t in g]), g_flat)
    expected = H @ g_flat
    got = torch.cat([t.flatten() for t in hg])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12 * expected.abs().max())
    assert expected.abs().max() > 0


def test_sign_convention_on_a_two_weight_case_solved_by_hand():
    """Logits z = (a, b) * x with x = 1 and label 0. With p = softmax(z / T):
    g = (-p1, p1) / T, H = p0 p1 [[1, -1], [-1, 1]] / T^2, so
    Hg = p0 p1 (-2 p1, 2 p1) / T^3 and S = -theta * Hg = (2a, -2b) p0 p1^2 / T^3.
    Removing a (which supports the true class) raises the gradient norm, removing b lowers
    it: GraSP must remove a even though |a| < |b| (magnitude pruning would remove a too, so
    the test also checks the case a > b, where the answer is still a)."""
    for a, b in ((0.5, 2.0), (3.0, 0.25)):
        model = nn.Linear(1, 2, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[a], [b]], dtype=torch.float64))
        x = torch.ones(1, 1, dtype=torch.float64)
        y = torch.zeros(1, dtype=torch.long)
        scores = grasp_scores(model, [""], [(x, y)], F.cross_entropy, T)[""]
        p = torch.softmax(torch.tensor([a, b], dtype=torch.float64) / T, 0)
        c = p[0] * p[1] ** 2 / T**3
        torch.testing.assert_close(scores.flatten(), torch.stack([2 * a * c, -2 * b * c]),
                                   rtol=1e-9, atol=0.0)

        # Brute force on the quantity GraSP preserves: |grad L|^2 after removing each weight.
        def grad_norm(w, x=x, y=y):
            w = w.clone().requires_grad_(True)
            loss = F.cross_entropy((x @ w.T) / T, y)
            return float(torch.autograd.grad(loss, w)[0].pow(2).sum())

        base = grad_norm(model.weight.detach())
        without_a = grad_norm(model.weight.detach() * torch.tensor([[0.0], [1.0]]))
        without_b = grad_norm(model.weight.detach() * torch.tensor([[1.0], [0.0]]))
        assert without_a > base > without_b

        masking = Masking.attach(model, "all")
        masking.init_from_scores({"": scores}, 1, keep="smallest")
        assert masking.masks[""].flatten().tolist() == [False, True]
        assert model.weight.detach().flatten().tolist() == [0.0, b]


def labelled_batches(labels, batch_size=4, length=40):
    y = torch.tensor(labels)
    x = torch.arange(len(labels), dtype=torch.float32)[:, None].expand(-1, length).clone()

    def batches():
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]

    return batches


def test_fetch_takes_the_first_examples_of_each_class_grouped_by_class():
    labels = [2, 0, 0, 1, 2, 2, 0, 1, 1, 0, 2, 1]
    stream = passes(labelled_batches(labels))
    x, y = fetch_per_class(stream, 3, 2)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    # x holds each example's index: first two of each class in data order.
    assert x[:, 0].tolist() == [1, 2, 3, 7, 0, 4]
    # The next fetch continues the stream, wrapping to a new pass when it runs out.
    x, y = fetch_per_class(stream, 3, 2)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    assert x[:, 0].tolist() == [9, 1, 8, 11, 10, 0]
    x, _ = fetch_per_class(stream, 3, 2)
    assert x[:, 0].tolist() == [2, 6, 3, 7, 4, 5]


def test_fetch_fails_clearly_when_a_class_is_too_rare():
    stream = passes(labelled_batches([0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        fetch_per_class(stream, 2, 3)


def make_ctx(model, target, policy="all", hparams=None, labels=None):
    config = RunConfig(method=MethodConfig("grasp", hparams or GraSPHparams()),
                       sparsity=SparsityConfig(target=target, layer_policy=policy))
    method = GraSP(config, config.method.hparams)
    masking = Masking.attach(model, policy)
    g = torch.Generator().manual_seed(9)
    y = torch.tensor(labels) if labels is not None else torch.arange(200) % 10
    x = torch.randn(len(y), 40, generator=g)

    def batches():
        for i in range(0, len(y), 32):
            yield x[i : i + 32], y[i : i + 32]

    ctx = SetupContext(model=model, masking=masking, config=config, loss_fn=F.cross_entropy,
                       batches=batches, steps_per_epoch=1, device=torch.device("cpu"),
                       generator=method.generator)
    return method, ctx


def reference_scores(model, ctx, method_generator_state, hp):
    """Independent recomputation: forward-over-reverse Hessian-vector product (torch.func)
    on a copy re-initialised the way the method does, over all Conv/Linear weights."""
    import copy

    gen = torch.Generator()
    gen.set_state(method_generator_state)
    model = copy.deepcopy(model)
    reference_init(model, gen)
    scorer = copy.deepcopy(model).train()
    for module in scorer.modules():
        if isinstance(module, nn.Linear):
            fresh = torch.empty(module.weight.shape)
            nn.init.xavier_normal_(fresh, generator=gen)
            with torch.no_grad():
                module.weight.copy_(fresh)
    x, y = fetch_per_class(passes(ctx.batches), 10, hp.samples_per_class)
    half = len(y) // 2
    halves = [(x[:half], y[:half]), (x[half:], y[half:])]
    params = {n: p.detach() for n, p in scorer.named_parameters()}
    names = [f"{n}.weight" for n, m in scorer.named_modules()
             if isinstance(m, (nn.Conv1d, nn.Linear))]

    def loss(ws):
        return sum(F.cross_entropy(functional_call(scorer, {**params, **ws}, (xh,)) / T, yh)
                   for xh, yh in halves)

    ws = {n: params[n] for n in names}
    g = grad(loss)(ws)
    _, hg = jvp(grad(loss), (ws,), (g,))
    return {n[: -len(".weight")]: -(ws[n] * hg[n]) for n in names}


@pytest.mark.parametrize("target,policy", [(0.9, "all"), (0.98, "all"),
                                           (0.8, "dense_first_last")])
def test_setup_removes_exactly_the_largest_scores(target, policy):
    torch.manual_seed(5)
    model = MNIST1DCNN()
    own = {n: p.detach().clone() for n, p in model.named_parameters()}
    hp = GraSPHparams(samples_per_class=4)
    method, ctx = make_ctx(model, target, policy, hp)
    state = method.generator.get_state()
    rng = torch.get_rng_state()
    method.setup(ctx)
    assert torch.equal(torch.get_rng_state(), rng)
    masks = ctx.masking.masks
    total = sum(m.numel() for m in masks.values())
    # The reference removes the scores above its k-th largest, k = int(N s): k - 1 weights.
    assert total - sum(int(m.sum()) for m in masks.values()) == int(total * target) - 1

    expected = reference_scores(MNIST1DCNN_with(own), ctx, state, hp)
    flat = torch.cat([expected[n].flatten() for n in masks])
    kept = torch.cat([m.flatten() for m in masks.values()])
    # Every removed weight scores at least as high as every kept one (fp tolerance).
    assert flat[~kept].min() >= flat[kept].max() - 1e-6 * flat.abs().max()
    # The trained network is the reference-initialised one (the Linear Xavier re-draw is the
    # scoring copy's only).
    gen = torch.Generator()
    gen.set_state(state)
    inited = MNIST1DCNN_with(own)
    reference_init(inited, gen)
    for name, p in model.named_parameters():
        layer = name.rsplit(".", 1)[0]
        mask = masks.get(layer) if name.endswith("weight") else None
        want = inited.get_parameter(name).detach()
        assert torch.equal(p.detach(), want * mask if mask is not None else want)
    for name in {"conv1", "conv2", "conv3", "linear"} - set(masks):
        assert bool((getattr(model, name).weight != 0).all())


def test_removal_count_is_the_references_threshold_rule():
    # Issue 11: 864 distinct scores at s = 0.5: threshold = the 432nd largest, kept <= it: 433.
    layer = nn.Linear(36, 24, bias=False)
    masking = Masking.attach(layer, "all")
    scores = torch.randperm(864, generator=torch.Generator().manual_seed(0)).float().view(24, 36)
    keep_at_most_threshold(masking, {"": scores}, 0.5)
    mask = masking.masks[""]
    assert int(mask.sum()) == 433
    assert torch.equal(mask, scores <= 432)  # 432 is the 432nd largest of 0..863: kept
    # Ties at the threshold all survive: 10 equal scores, remove int(10 * 0.3) = 3.
    masking = Masking.attach(nn.Linear(5, 2, bias=False), "all")
    keep_at_most_threshold(masking, {"": torch.tensor([[5.0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])}, 0.3)
    assert int(masking.masks[""].sum()) == 9  # only the 5 is above the 3rd largest (1)


def test_reference_init_is_weights_init():
    torch.manual_seed(0)
    model = MNIST1DCNN()
    reference_init(model, torch.Generator().manual_seed(1))
    for module in model.modules():
        if isinstance(module, nn.Conv1d):
            fan_out = module.weight.shape[0] * module.weight.shape[2]
            # Kaiming normal, fan-out, ReLU gain: std sqrt(2 / fan_out).
            std = float(module.weight.detach().std())
            assert abs(std / math.sqrt(2 / fan_out) - 1) < 0.15, (std, fan_out)
        if isinstance(module, nn.Linear):
            assert abs(float(module.weight.detach().std()) / 0.01 - 1) < 0.15
        if isinstance(module, (nn.Conv1d, nn.Linear)) and module.bias is not None:
            assert not module.bias.any()
    # Same generator state, same weights; the global RNG is not used.
    again = MNIST1DCNN()
    rng = torch.get_rng_state()
    reference_init(again, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), rng)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def MNIST1DCNN_with(state):
    model = MNIST1DCNN()
    model.load_state_dict(state)
    return model


def test_resuming_skips_scoring():
    method, ctx = make_ctx(MNIST1DCNN(), 0.9)
    ctx.resuming = True
    method.setup(ctx)
    assert all(bool(m.all()) for m in ctx.masking.masks.values())
