"""Thin dense: the solved width matches the sparse networks' nonzero count, checked against a
brute-force enumeration of every width the model can take."""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import MethodConfig, ModelConfig, RunConfig, SparsityConfig
from bench.models import build_model
from methods.masking import kept_count, prunable_layers
from methods.thin_dense import ThinDense, count_params, solve_width, sparse_nonzeros

# name -> (num_classes, input shape, base channel counts that `width` scales)
MODELS = {
    "mnist1d_cnn": (10, (40,), (25,)),
    "mnist1d_mlp": (10, (40,), (100,)),
    "lenet300_100": (10, (1, 28, 28), (300, 100)),
    "lenet5_caffe": (10, (1, 28, 28), (20, 50, 500)),
    "resnet8": (10, (3, 32, 32), (16, 32, 64)),
    "resnet20": (10, (3, 32, 32), (16, 32, 64)),
}
# How many of the 10 (policy, target) cells below have *no* width within 1% of the sparse
# count (found by brute force): one uniform multiplier over integer channel counts moves the
# count in steps wider than the 2% window. Pinned so a solver or model change shows up.
UNREACHABLE_AT_MOST = {"mnist1d_cnn": 9, "mnist1d_mlp": 4, "lenet300_100": 2,
                       "lenet5_caffe": 3, "resnet8": 4, "resnet20": 5}
TARGETS = (0.5, 0.8, 0.9, 0.95, 0.98)
POLICIES = ("all", "dense_first_last")


def maker(name):
    classes, shape, _ = MODELS.get(name, (1000, (3, 224, 224), ()))
    return lambda width: build_model(name, classes, shape, width)


def achievable_counts(name) -> list[int]:
    """Every parameter count the model can have for width in (0, 1]: one width strictly inside
    each interval between the points where some layer's round(base * width) changes."""
    bases = MODELS[name][2]
    cuts = sorted({(k + 0.5) / b for b in bases for k in range(b)} | {1.0})
    widths = [cuts[0] / 2] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:], strict=False)] + [1.0]
    make = maker(name)
    return sorted({count_params(make, w) for w in widths})


@pytest.fixture(scope="module")
def counts_cache():
    return {}


def expected_nonzeros(name, policy, target) -> int:
    model = maker(name)(1.0)
    total = sum(p.numel() for p in model.parameters())
    for module in prunable_layers(model, policy).values():
        total -= module.weight.numel() - kept_count(module.weight.numel(), 1.0 - target)
    return total


@pytest.mark.parametrize("name", sorted(MODELS))
def test_width_is_the_best_achievable_and_within_one_percent_where_possible(name, counts_cache):
    counts = counts_cache.setdefault(name, achievable_counts(name))
    unreachable = []
    for policy in POLICIES:
        for target in TARGETS:
            goal = expected_nonzeros(name, policy, target)
            make = maker(name)
            assert sparse_nonzeros(make(1.0), policy, target) == goal
            width, params = solve_width(make, 1.0, goal)
            assert 0 < width <= 1.0
            assert count_params(make, width) == params
            best = min(abs(c - goal) for c in counts)
            # Nothing any width can build is closer to the sparse count.
            assert abs(params - goal) == best, (policy, target)
            if best <= 0.01 * goal:
                assert abs(params - goal) <= 0.01 * goal
            else:
                unreachable.append((policy, target))
    # Integer channels make 1% impossible only where the count jumps over the 2% window
    # around the goal in one step; print them so the gap is visible in -rA output.
    print(name, "no width within 1%:", unreachable)
    assert len(unreachable) <= UNREACHABLE_AT_MOST[name]


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_resnet50_within_one_percent(target):
    make = maker("resnet50")
    goal = sparse_nonzeros(_meta(make, 1.0), "all", target)
    width, params = solve_width(make, 1.0, goal)
    assert abs(params - goal) <= 0.01 * goal
    assert 0.25 < width < 0.5


def _meta(make, width):
    with torch.device("meta"):
        return make(width)


def test_build_model_records_the_solution_and_leaves_the_rng_alone():
    config = RunConfig(model=ModelConfig("lenet300_100"), method=MethodConfig("thin_dense"),
                       sparsity=SparsityConfig(target=0.9))
    method = ThinDense(config, None)
    make = maker("lenet300_100")
    torch.manual_seed(3)
    model = method.build_model(make, 0.9)
    summary = method.summary()
    torch.manual_seed(3)
    direct = make(summary["width"])
    # Solving built only meta models: the real model got exactly the init it would alone.
    for a, b in zip(model.parameters(), direct.parameters(), strict=True):
        assert torch.equal(a, b)
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["target_params"] == expected_nonzeros("lenet300_100", "all", 0.9)
    assert math.isclose(summary["relative_gap"],
                        (summary["params"] - summary["target_params"])
                        / summary["target_params"])
    assert abs(summary["relative_gap"]) <= 0.01
    assert model.fc1.out_features == round(300 * summary["width"])


def test_layer_policy_changes_the_budget():
    make = maker("mnist1d_mlp")
    all_layers = sparse_nonzeros(make(1.0), "all", 0.9)
    keep_ends = sparse_nonzeros(make(1.0), "dense_first_last", 0.9)
    # Dense first (40x100) and last (100x10) layers keep their 5,000 weights.
    assert keep_ends - all_layers == (4000 + 1000) - (400 + 100)


def test_zero_target_keeps_the_base_width():
    make = maker("mnist1d_cnn")
    assert solve_width(make, 1.0, sparse_nonzeros(make(1.0), "all", 0.0)) == (1.0, 5210)
    assert solve_width(make, 0.5, 10**9)[0] == 0.5
