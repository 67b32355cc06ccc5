"""EigenDamage building blocks: K-FAC factors against a direct computation, the rebuilt
network's function, importances on a hand-made case, the threshold search."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.flops import count
from bench.models import build_model
from methods.eigendamage.eigen import decompose_layer
from methods.eigendamage.kfac import collect_factors, sample_labels
from methods.eigendamage.prune import (
    LayerPlan,
    decide,
    find_threshold,
    keep_indices,
    pooled_importances,
    weights_after,
)
from methods.eigendamage.pruner import eligible_slots, prune_round, slot_weights
from methods.eigendamage.rebuild import Bottleneck, make_bottleneck, replace_module


class TinyConv(nn.Module):
    """Conv2d with stride, padding, dilation, a non-square kernel and biases, then Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(3, 4, (2, 3), padding=(1, 0), dilation=(1, 2))
        self.fc = nn.Linear(4 * 6 * 1, 5)  # on 9x9 inputs

    def layers(self):
        return {"conv1": self.conv1, "conv2": self.conv2, "fc": self.fc}

    def forward(self, x, keep=None):
        h1 = self.conv1(x)
        h2 = self.conv2(torch.relu(h1))
        out = self.fc(torch.relu(h2).flatten(1))
        if keep is not None:
            keep.update(x1=x, h1=h1, x2=torch.relu(h1), h2=h2, x3=torch.relu(h2).flatten(1),
                        out=out)
        return out


def direct_conv_a(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Σ over examples, output positions and kernel positions of a aᵀ / (S² B P), by loops."""
    x = x.double()
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    kh, kw = conv.kernel_size
    xp = F.pad(x, (pw, pw, ph, ph))
    b, c = x.shape[:2]
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    total = torch.zeros(c, c, dtype=torch.float64)
    for n, i, j, p, q in itertools.product(range(b), range(oh), range(ow), range(kh), range(kw)):
        v = xp[n, :, i * sh + p * dh, j * sw + q * dw]
        total += torch.outer(v, v)
    s = oh * ow
    return total / (s * s * b * kh * kw)


def direct_conv_g(g: torch.Tensor) -> torch.Tensor:
    g = g.double()
    b, c, oh, ow = g.shape
    total = torch.zeros(c, c, dtype=torch.float64)
    for n, i, j in itertools.product(range(b), range(oh), range(ow)):
        total += torch.outer(g[n, :, i, j], g[n, :, i, j])
    return total * b * oh * ow


@pytest.mark.parametrize("fisher_type", ["empirical", "true"])
def test_kfac_factors_match_direct_computation(fisher_type):
    torch.manual_seed(0)
    net = TinyConv()
    batches = [(torch.randn(3, 2, 9, 9), torch.randint(0, 5, (3,))) for _ in range(2)]
    factors = collect_factors(net, net.layers(), batches, fisher_type,
                              torch.Generator().manual_seed(5))
    labels_gen = torch.Generator().manual_seed(5)
    expect = {name: [0, 0] for name in net.layers()}
    for x, y in batches:
        keep: dict[str, torch.Tensor] = {}
        out = net(x, keep)
        target = sample_labels(out, labels_gen) if fisher_type == "true" else y
        loss = F.cross_entropy(out, target)
        g1, g2, g3 = torch.autograd.grad(loss, [keep["h1"], keep["h2"], keep["out"]])
        a3, b = keep["x3"].double(), x.shape[0]
        for name, (a, g) in {
            "conv1": (direct_conv_a(keep["x1"], net.conv1), direct_conv_g(g1)),
            "conv2": (direct_conv_a(keep["x2"], net.conv2), direct_conv_g(g2)),
            "fc": (a3.t() @ a3 / b, g3.double().t() @ g3.double() * b),
        }.items():
            expect[name][0] += a
            expect[name][1] += g
    for name, (a, g) in expect.items():
        torch.testing.assert_close(factors[name].A, a, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(factors[name].G, g, rtol=1e-6, atol=1e-12)
    # Factors are taken with respect to layer outputs: no gradient is left on the weights.
    assert all(p.grad is None for p in net.parameters())


def test_kfac_conv1d_matches_conv2d_of_height_one():
    torch.manual_seed(1)
    c1 = nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2)
    c2 = nn.Conv2d(3, 4, (1, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 2))
    with torch.no_grad():
        c2.weight.copy_(c1.weight.unsqueeze(2))
        c2.bias.copy_(c1.bias)
    x, y = torch.randn(4, 3, 11), torch.randint(0, 4, (4,))
    m1 = nn.Sequential(c1, nn.AdaptiveAvgPool1d(1), nn.Flatten())
    m2 = nn.Sequential(c2, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    f1 = collect_factors(m1, {"c": c1}, [(x, y)], "empirical")["c"]
    f2 = collect_factors(m2, {"c": c2}, [(x.unsqueeze(2), y)], "empirical")["c"]
    torch.testing.assert_close(f1.A, f2.A)
    torch.testing.assert_close(f1.G, f2.G)
    torch.testing.assert_close(f1.A, direct_conv_a(x.unsqueeze(2), c2))


def test_importance_on_hand_made_case():
    # A, G diagonal: the eigenbasis is a permutation of the axes (eigh sorts ascending), so
    # W* is W with its columns reordered (up to signs) and every number can be done by hand.
    weight = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    A = torch.diag(torch.tensor([3.0, 1.0, 2.0]))
    G = torch.diag(torch.tensor([1.0, 5.0]))
    eig = decompose_layer(weight, A, G)
    assert eig.d_a.tolist() == [1.0, 2.0, 3.0]
    assert eig.d_g.tolist() == [1.0, 5.0]
    # input directions are original inputs 1, 2, 0 in that order
    assert eig.Q_a.abs().argmax(0).tolist() == [1, 2, 0]
    assert eig.W_star.abs().tolist() == [[2.0, 0.0, 1.0], [1.0, 3.0, 0.0]]
    # imp_ij = W*_ij² d_g_i d_a_j: [[4, 0, 3], [5, 90, 0]]
    assert eig.imp_in.tolist() == [9.0, 90.0, 3.0]
    assert eig.imp_out.tolist() == [7.0, 95.0]
    # The largest-eigenvalue input direction is the least important: its weights are small.
    assert torch.argsort(eig.imp_in).tolist() == [2, 0, 1]
    plan = LayerPlan(3, 2, 1, 6, False, eig.imp_in, eig.imp_out)
    assert pooled_importances({"l": plan}).tolist() == [3.0, 7.0, 9.0, 90.0, 95.0]
    d = decide(plan, 7.0, 0.95)  # keep > 7: inputs 0 and 1, output 1
    assert d.kept_in.tolist() == [0, 1] and d.kept_out.tolist() == [1]
    # That bottleneck (3·2 + 2·1 + 1·2 = 10 weights) is larger than the layer (6): not built.
    assert not d.rebuild and d.weights == 6
    d = decide(plan, 9.0, 0.95)  # keep input 1 and output 1: 3 + 1 + 2 = 6 <= 6, built
    assert d.kept_in.tolist() == [1] and d.kept_out.tolist() == [1]
    assert d.rebuild and d.weights == 6


def test_eigenvalues_below_eps_are_zeroed():
    eig = decompose_layer(torch.ones(2, 2), torch.diag(torch.tensor([1e-12, 1.0])),
                          torch.eye(2))
    assert eig.d_a.tolist() == [0.0, 1.0]
    assert eig.imp_in[0] == 0.0


def test_keep_indices_cap_and_at_least_one():
    imps = torch.arange(25, dtype=torch.float64)
    assert keep_indices(imps, 20.0, 0.95).tolist() == [21, 22, 23, 24]
    # Everything below the threshold: the reference's cap keeps n - int(n * limit) - 1.
    assert keep_indices(imps, 100.0, 0.95).tolist() == [24]
    assert keep_indices(imps, 100.0, 0.5).tolist() == list(range(13, 25))
    # Kept count exactly at the cap is allowed (pruned fraction 0.48 <= 0.5).
    assert keep_indices(imps, 11.0, 0.5).tolist() == list(range(12, 25))
    # The survivor is the most important one even when it is not the last index.
    assert keep_indices(torch.tensor([0.0, 5.0, 1.0]), 9.0, 0.9).tolist() == [1]


def test_bottleneck_larger_than_layer_is_not_built():
    plan = LayerPlan(4, 4, 1, 16, False, torch.ones(4), torch.ones(4))
    d = decide(plan, -math.inf, 0.95)
    assert not d.rebuild and d.weights == 16
    d = decide(plan, 2.0, 0.95)  # all below: cap keeps 1 in, 1 out -> 4 + 1 + 4 = 9 weights
    assert d.rebuild and d.weights == 9


def test_find_threshold_is_the_smallest_that_fits():
    gen = torch.Generator().manual_seed(3)
    plans = {
        f"l{i}": LayerPlan(c_in, c_out, k, c_in * c_out * k, False,
                           torch.rand(c_in, generator=gen, dtype=torch.float64),
                           torch.rand(c_out, generator=gen, dtype=torch.float64))
        for i, (c_in, c_out, k) in enumerate([(6, 8, 3), (8, 8, 9), (8, 5, 1)])
    }
    pooled = pooled_importances(plans).tolist()
    costs = [weights_after(plans, t, 0.95) for t in pooled]
    assert costs == sorted(costs, reverse=True)  # monotone: bisection is valid
    for budget in (700, 500, 300, 150, costs[-1]):
        found = find_threshold(plans, budget, 0.95)
        brute = min(i for i, c in enumerate(costs) if c <= budget)
        assert found.reached and found.threshold == pooled[brute]
        assert found.weights == costs[brute] <= budget
    too_small = find_threshold(plans, costs[-1] - 1, 0.95)
    assert not too_small.reached and too_small.weights == costs[-1]
    nothing = find_threshold(plans, 10**6, 0.95)
    assert nothing.threshold == -math.inf and nothing.weights == sum(
        p.current_weights for p in plans.values())


def _full_rebuild(model: nn.Module, batches) -> nn.Module:
    """Every eligible layer as a bottleneck keeping every direction (nothing pruned)."""
    slots = eligible_slots(model)
    factors = collect_factors(model, {s: model.get_submodule(s) for s in slots}, batches)
    for s in slots:
        layer = model.get_submodule(s)
        eig = decompose_layer(layer.weight, factors[s].A, factors[s].G)
        replace_module(model, s, make_bottleneck(layer, eig.Q_a, eig.W_star, eig.Q_g))
    return model


@pytest.mark.parametrize("name,shape", [("mnist1d_cnn", (40,)), ("mnist1d_mlp", (40,)),
                                        ("resnet8", (3, 16, 16)), ("tiny", (2, 9, 9))])
def test_nothing_pruned_computes_the_same_function(name, shape):
    torch.manual_seed(0)
    model = TinyConv() if name == "tiny" else build_model(name, 5, shape)
    x, y = torch.randn(16, *shape), torch.randint(0, 5, (16,))
    model.eval()
    before = model(x)
    original_params = sum(p.numel() for p in model.parameters())
    rebuilt = _full_rebuild(copy.deepcopy(model), [(x, y)])
    rebuilt.eval()
    slots = eligible_slots(model)
    assert all(isinstance(rebuilt.get_submodule(s), Bottleneck) for s in slots)
    assert (rebuilt(x) - before).abs().max().item() <= 1e-5
    # A second round with room to spare re-rotates the bottlenecks, still the same function.
    budget = sum(slot_weights(rebuilt.get_submodule(s)) for s in slots)
    prune_round(rebuilt, slots, [(x, y)], budget, limit=0.95)
    assert (rebuilt(x) - before).abs().max().item() <= 1e-5
    # The rotations are ordinary Conv/Linear modules that the harness counter sees: each slot
    # with C_in, C_out and kernel size P adds C_in² + C_out² weights when nothing is pruned.
    extra = 0
    for s in slots:
        w = model.get_submodule(s).weight
        extra += w.shape[0] ** 2 + w.shape[1] ** 2
    assert count(rebuilt, shape).params_total == original_params + extra


def test_prune_round_meets_budget_and_keeps_last_layer():
    torch.manual_seed(0)
    model = build_model("mnist1d_cnn", 10, (40,))
    batches = [(torch.randn(32, 40), torch.randint(0, 10, (32,))) for _ in range(2)]
    slots = eligible_slots(model)
    assert slots == ["conv1", "conv2", "conv3"]  # the last layer is never pruned
    budget = sum(model.get_submodule(s).weight.numel() for s in slots) // 4
    result = prune_round(model, slots, batches, budget, limit=0.95,
                         generator=torch.Generator().manual_seed(0))
    achieved = sum(slot_weights(model.get_submodule(s)) for s in slots)
    assert result.search.reached and achieved == result.search.weights <= budget
    assert isinstance(model.linear, nn.Linear)
    for s, (kept_in, kept_out) in result.shapes.items():
        core = model.get_submodule(s).core
        assert tuple(core.weight.shape[:2]) == (kept_out, kept_in)
    assert model(torch.randn(2, 40)).shape == (2, 10)
