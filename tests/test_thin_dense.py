"""Thin dense: the solved channels match the sparse networks' nonzero count within 1% on every
model with a width knob, checked against brute-force enumeration of every channel vector with a
hand-written parameter count (itself checked against real builds), not the solver's polynomial."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from bench.config import MethodConfig, ModelConfig, RunConfig, SparsityConfig
from bench.errors import UserError
from bench.models import MODELS, ModelMaker, build_model
from bench.run import run_one
from bench.train import Interrupted
from methods.masking import kept_count, prunable_layers
from methods.thin_dense import ParamPolynomial, ThinDense, solve, solve_groups, sparse_nonzeros
from tests.helpers import assert_identical, final_weights, tiny_config

SHAPES = {
    "mnist1d_cnn": (10, (40,)),
    "mnist1d_mlp": (10, (40,)),
    "lenet300_100": (10, (1, 28, 28)),
    "lenet5_caffe": (10, (1, 28, 28)),
    "resnet8": (10, (3, 32, 32)),
    "resnet20": (10, (3, 32, 32)),
    "resnet50": (1000, (3, 224, 224)),
}
SMALL = [name for name in SHAPES if name != "resnet50"]
TARGETS = (0.5, 0.8, 0.9, 0.95, 0.98)
POLICIES = ("all", "dense_first_last")
# The only cells where no channel vector is within 1% of the sparse count: the MLP has a single
# width group (its residual ties the hidden widths) and its count jumps over the 2% window.
# Proven below by enumerating every hidden width 1..100. Pinned so a change shows up.
UNREACHABLE = {("mnist1d_mlp", "all", t) for t in (0.5, 0.9, 0.95, 0.98)}


def maker(name: str) -> ModelMaker:
    classes, shape = SHAPES[name]
    return ModelMaker(name, classes, shape)


def real_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta(build):
    with torch.device("meta"):
        return build()


# --- an independent parameter count per model, written from the architectures ---------------

def _cifar_resnet(blocks_per_stage, c1, c2, c3):
    def block(c_in, c_out, projection):
        convs = 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out  # two 3x3 convs + two BNs
        return convs + (c_in * c_out + 2 * c_out if projection else 0)

    total = 27 * c1 + 2 * c1  # stem 3x3 conv on RGB + BN
    for c_in, c_out, projection in ((c1, c1, False), (c1, c2, True), (c2, c3, True)):
        total = total + block(c_in, c_out, projection) + (blocks_per_stage - 1) * block(
            c_out, c_out, False)
    return total + 10 * c3 + 10


FORMULAS = {
    # conv(1->c1, k5), conv(c1->c2, k3), conv(c2->c3, k3), linear(5 c3 -> 10); length 40 -> 5
    "mnist1d_cnn": lambda c1, c2, c3: 6 * c1 + 3 * c1 * c2 + c2 + 3 * c2 * c3 + c3 + 50 * c3 + 10,
    "mnist1d_mlp": lambda h: 41 * h + h * h + h + 10 * h + 10,
    "lenet300_100": lambda h1, h2: 785 * h1 + h1 * h2 + h2 + 10 * h2 + 10,
    # conv 5x5 on 1 channel, conv 5x5, fc from c2 x 4 x 4, fc to 10
    "lenet5_caffe": lambda c1, c2, f: 26 * c1 + 25 * c1 * c2 + c2 + 16 * c2 * f + f + 10 * f + 10,
    "resnet8": lambda c1, c2, c3: _cifar_resnet(1, c1, c2, c3),
    "resnet20": lambda c1, c2, c3: _cifar_resnet(3, c1, c2, c3),
}


def expected_nonzeros(name: str, policy: str, target: float, width: float = 1.0) -> int:
    model = maker(name)(width)
    total = real_count(model)
    for module in prunable_layers(model, policy).values():
        total -= module.weight.numel() - kept_count(module.weight.numel(), 1.0 - target)
    return total


def within(params: int, goal: int) -> bool:
    return abs(params - goal) <= 0.01 * goal


def uniform_counts(name: str, width: float) -> dict[int, tuple[int, ...]]:
    """Every count one multiplier in (0, width] builds (count -> channels): one multiplier
    strictly inside each interval between the points where some group's rounding changes."""
    spec = MODELS[name]
    cuts = sorted({(k + 0.5) / b for b in spec.base_channels for k in range(math.ceil(b * width))
                   if (k + 0.5) / b < width} | {width})
    widths = [cuts[0] / 2] + [(a + b) / 2 for a, b in itertools.pairwise(cuts)] + [width]
    return {FORMULAS[name](*spec.channels(w)): spec.channels(w) for w in widths}


def brute_force(name: str, top: tuple[int, ...], goal: int):
    """The rule's optimum over every vector 1 <= c <= top: (spread, |gap|, count, channels) of
    the vector within 1% closest to uniform, or None when no vector is within 1%."""
    grids = np.meshgrid(*[np.arange(1, t + 1, dtype=np.int64) for t in top], indexing="ij")
    columns = [g.ravel() for g in grids]
    counts = FORMULAS[name](*columns)
    inside = np.flatnonzero(np.abs(counts - goal) * 100 <= goal)
    if inside.size == 0:
        return None
    ratios = np.stack([columns[g][inside] / top[g] for g in range(len(top))])
    spread = ratios.max(axis=0) / ratios.min(axis=0)
    # Floats only pre-select; the comparison itself is exact.
    near = inside[spread <= spread.min() * (1 + 1e-9)]
    keys = []
    for i in near:
        c = tuple(int(col[i]) for col in columns)
        r = [Fraction(x, t) for x, t in zip(c, top, strict=True)]
        keys.append((max(r) / min(r), abs(int(counts[i]) - goal), int(counts[i]), c))
    return min(keys)


# --- models: explicit channels --------------------------------------------------------------

@pytest.mark.parametrize("name", SMALL)
def test_formula_matches_real_builds(name):
    spec = MODELS[name]
    top = spec.base_channels
    points = {top, tuple(1 for _ in top), tuple(max(1, t // 3) for t in top),
              tuple((t * (g + 2)) // 7 + 1 for g, t in enumerate(top)),
              tuple(reversed([min(t, 5 + g) for g, t in enumerate(top)]))}
    for channels in points:
        model = maker(name).with_channels(channels)
        assert real_count(model) == FORMULAS[name](*channels), channels


@pytest.mark.parametrize("name", list(SHAPES))
def test_channels_equal_to_a_width_build_the_identical_model(name):
    make = maker(name)
    widths = (0.25, 0.5) if name == "resnet50" else (0.13, 0.5, 1.0, 1.7)
    for width in widths:
        torch.manual_seed(11)
        by_width = make(width)
        after_width = torch.get_rng_state()
        torch.manual_seed(11)
        by_channels = make.with_channels(MODELS[name].channels(width))
        assert torch.equal(torch.get_rng_state(), after_width)  # same init draws, same order
        a, b = by_width.state_dict(), by_channels.state_dict()
        assert list(a) == list(b)
        for key in a:
            assert torch.equal(a[key], b[key]), (width, key)


def test_width_maps_to_channels_per_group():
    assert MODELS["lenet5_caffe"].channels(0.31) == (6, 16, 155)
    assert MODELS["resnet50"].channels(0.29102) == (19, 37, 75, 149)
    assert MODELS["mnist1d_mlp"].channels(0.001) == (1,)
    model = build_model("mnist1d_cnn", 10, (40,), channels=(2, 5, 3))
    assert [m.out_channels for m in (model.conv1, model.conv2, model.conv3)] == [2, 5, 3]
    assert model.linear.in_features == 15
    resnet = build_model("resnet8", 10, (3, 32, 32), channels=(3, 5, 7))
    assert resnet.conv1.out_channels == 3 and resnet.fc.in_features == 7


def test_explicit_channels_are_checked():
    for bad in ((2, 5), (2, 0, 3), (2, 2.5, 3)):
        with pytest.raises(UserError, match="conv1, conv2, conv3"):
            build_model("mnist1d_cnn", 10, (40,), channels=bad)
    with pytest.raises(ValueError, match="not both"):
        build_model("mnist1d_cnn", 10, (40,), 0.5, channels=(2, 2, 2))


# --- the solver ------------------------------------------------------------------------------

def check_cell(name: str, policy: str, target: float, width: float = 1.0) -> bool:
    """Asserts the solution for one cell follows the rule; returns whether it is within 1%."""
    make, spec = maker(name), MODELS[name]
    goal = expected_nonzeros(name, policy, target, width)
    assert sparse_nonzeros(make(width), policy, target) == goal
    top = spec.channels(width)
    solution = solve(make, width, goal)
    cell = (name, policy, target, width)
    assert all(1 <= c <= t for c, t in zip(solution.channels, top, strict=True)), cell
    # The count is the real one, and the hand formula agrees.
    assert solution.params == real_count(make.with_channels(solution.channels)), cell
    assert solution.params == FORMULAS[name](*solution.channels), cell

    uniform = uniform_counts(name, width)
    nearest_uniform = min(abs(c - goal) for c in uniform)
    if nearest_uniform <= 0.01 * goal:
        # One multiplier reaches 1%: it is kept, and it is the nearest such count.
        assert solution.width is not None and 0 < solution.width <= width, cell
        assert spec.channels(solution.width) == solution.channels, cell
        assert abs(solution.params - goal) == nearest_uniform, cell
        return True
    best = brute_force(name, top, goal)
    if best is None:
        # Nothing is within 1%: the nearest uniform width, which for one group is the nearest
        # count any model can have.
        assert solution.width is not None, cell
        assert abs(solution.params - goal) == nearest_uniform, cell
        return False
    assert solution.width is None, cell
    assert (solution.spread, abs(solution.params - goal), solution.params,
            solution.channels) == best, cell
    return True


@pytest.mark.parametrize("name", SMALL)
def test_solution_follows_the_rule_and_is_within_one_percent(name):
    unreachable = {(name, p, t) for p in POLICIES for t in TARGETS
                   if not check_cell(name, p, t)}
    assert unreachable == {cell for cell in UNREACHABLE if cell[0] == name}


def test_mlp_cells_are_unreachable_by_any_hidden_width():
    widths = range(1, 101)
    for _, policy, target in sorted(UNREACHABLE):
        goal = expected_nonzeros("mnist1d_mlp", policy, target)
        counts = [FORMULAS["mnist1d_mlp"](h) for h in widths]
        assert min(abs(c - goal) for c in counts) > 0.01 * goal
        solution = solve(maker("mnist1d_mlp"), 1.0, goal)
        assert abs(solution.params - goal) == min(abs(c - goal) for c in counts)


@pytest.mark.parametrize("name, width", [("mnist1d_cnn", 0.6), ("resnet8", 1.5),
                                         ("lenet300_100", 0.6)])
def test_other_run_widths_cap_the_channels(name, width):
    for target in (0.8, 0.98):
        assert check_cell(name, "all", target, width)


def test_hand_solved_cell():
    # MNIST-1D CNN at 98%: 189 nonzeros. One multiplier builds (2,2,2) = 150 or (3,3,3) = 238;
    # (2,5,2) = 12 + 30 + 5 + 30 + 2 + 100 + 10 = 189 exactly, spread 5/2; the brute force above
    # shows no vector with a smaller spread lands in the window [187.11, 190.89].
    goal = expected_nonzeros("mnist1d_cnn", "all", 0.98)
    assert goal == 189
    solution = solve(maker("mnist1d_cnn"), 1.0, goal)
    assert solution.channels == (2, 5, 2) and solution.params == 189
    assert solution.spread == Fraction(5, 2) and solution.width is None


def test_ties_go_to_the_smaller_count_then_the_smaller_vector():
    # Count 3 c1 + 5 c2 + 100, goal 112 (window 110.88..113.12): (2,1) = 111 and (1,2) = 113
    # have the same spread 2 and the same gap 1; the smaller count wins (never over budget).
    poly = ParamPolynomial.fit(lambda c: 3 * c[0] + 5 * c[1] + 100, 2)
    solution = solve_groups(poly, (12, 12), 112, Fraction(1, 10))
    assert (solution.channels, solution.params, solution.spread) == ((2, 1), 111, 2)
    # Count 4 (c1 + c2) + 100, goal 136: (4,5) and (5,4) tie on everything but the vector.
    poly = ParamPolynomial.fit(lambda c: 4 * (c[0] + c[1]) + 100, 2)
    solution = solve_groups(poly, (12, 12), 136, Fraction(1, 3))
    assert (solution.channels, solution.params) == ((4, 5), 136)
    assert solve_groups(poly, (12, 12), 142, Fraction(1, 3)) is None  # 140 and 144 miss 1%
    # The same tie inside one anchor's box: (2,7,2) = 230 and (3,6,2) = 234, both spread 5/2.
    poly = ParamPolynomial.fit(lambda c: 6 * c[0] + 4 * c[1] + 9 * c[2] + 3 * c[0] * c[1]
                               + 5 * c[1] * c[2] + 60, 3)
    solution = solve_groups(poly, (3, 7, 5), 232, Fraction(1, 2))
    assert (solution.channels, solution.params, solution.spread) == ((2, 7, 2), 230, 2.5)


def test_group_search_matches_brute_force_on_random_counts():
    rng = np.random.default_rng(0)
    for _ in range(150):
        groups = int(rng.integers(2, 4))
        top = tuple(int(t) for t in rng.integers(2, 9, groups))
        lin, quad = rng.integers(0, 10, groups), rng.integers(0, 6, (groups, groups))

        def count(c, lin=lin, quad=quad):
            # +c[g]: every channel adds parameters, as in a real layer.
            return 30 + sum(int(lin[g]) * c[g] + c[g] for g in range(len(c))) + sum(
                int(quad[g][h]) * c[g] * c[h] for g in range(len(c)) for h in range(g, len(c)))

        poly = ParamPolynomial.fit(count, groups)
        vectors = list(itertools.product(*[range(1, t + 1) for t in top]))
        for goal in rng.integers(count((1,) * groups), count(top) + 1, 6):
            goal = int(goal)
            keys = [(max(r) / min(r), abs(count(c) - goal), count(c), c)
                    for c in vectors if abs(count(c) - goal) * 100 <= goal
                    for r in [[Fraction(x, t) for x, t in zip(c, top, strict=True)]]]
            found = solve_groups(poly, top, goal, Fraction(int(rng.integers(1, 10)), 10))
            expected = min(keys) if keys else None
            assert (found and (found.spread, abs(found.params - goal), found.params,
                               found.channels)) == expected, (top, goal)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_resnet50_within_one_percent(target):
    make = maker("resnet50")
    goal = sparse_nonzeros(meta(lambda: make(1.0)), "all", target)
    solution = solve(make, 1.0, goal)
    assert within(solution.params, goal)
    assert solution.params == real_count(meta(lambda: make.with_channels(solution.channels)))
    assert solution.width is not None and 0.15 < solution.width < 0.5


def test_resnet50_count_is_quadratic_in_its_stages():
    make = maker("resnet50")

    def count(channels):
        return real_count(meta(lambda: make.with_channels(channels)))

    poly = ParamPolynomial.fit(count, 4)
    for channels in ((64, 128, 256, 512), (1, 2, 5, 11), (20, 40, 80, 161), (7, 64, 3, 100)):
        assert poly(channels) == count(channels)
    # The group search itself, run on resnet50: within 1%, a real count, one channel off a
    # uniform vector.
    solution = solve_groups(poly, (64, 128, 256, 512), 3_000_000, Fraction(1, 3))
    assert solution is not None and within(solution.params, 3_000_000)
    assert solution.params == count(solution.channels)
    assert solution.spread < Fraction(101, 100)


def _build_and_compare(name: str, policy: str, target: float):
    config = RunConfig(model=ModelConfig(name), method=MethodConfig("thin_dense"),
                       sparsity=SparsityConfig(target=target, layer_policy=policy))
    method = ThinDense(config, None)
    make = maker(name)
    torch.manual_seed(3)
    model = method.build_model(make, target)
    summary = method.summary()
    torch.manual_seed(3)
    channels = tuple(summary["channels"].values())
    direct = make.with_channels(channels) if summary["width"] is None else make(summary["width"])
    # Solving built only meta models: the real model got exactly the init it would alone.
    for a, b in zip(model.parameters(), direct.parameters(), strict=True):
        assert torch.equal(a, b)
    assert summary["params"] == real_count(model)
    assert summary["target_params"] == expected_nonzeros(name, policy, target)
    assert math.isclose(summary["relative_gap"],
                        (summary["params"] - summary["target_params"])
                        / summary["target_params"])
    assert abs(summary["relative_gap"]) <= 0.01
    assert summary["base_params"] == real_count(make(1.0))
    assert list(summary["base_channels"]) == list(MODELS[name].group_names)
    return model, summary


def test_build_model_records_a_uniform_solution_and_leaves_the_rng_alone():
    model, summary = _build_and_compare("lenet300_100", "all", 0.9)
    assert summary["width"] == 0.112 and summary["channels"] == {"fc1": 34, "fc2": 11}
    assert model.fc1.out_features == round(300 * summary["width"])


def test_build_model_records_per_group_channels_and_leaves_the_rng_alone():
    model, summary = _build_and_compare("mnist1d_cnn", "all", 0.98)
    assert summary["width"] is None
    assert summary["channels"] == {"conv1": 2, "conv2": 5, "conv3": 2}
    assert summary["spread"] == 2.5 and summary["relative_gap"] == 0.0
    assert (model.conv1.out_channels, model.conv2.out_channels) == (2, 5)


def test_layer_policy_changes_the_budget():
    make = maker("mnist1d_mlp")
    all_layers = sparse_nonzeros(make(1.0), "all", 0.9)
    keep_ends = sparse_nonzeros(make(1.0), "dense_first_last", 0.9)
    # Dense first (40x100) and last (100x10) layers keep their 5,000 weights.
    assert keep_ends - all_layers == (4000 + 1000) - (400 + 100)


def test_zero_target_keeps_the_run_width():
    make = maker("mnist1d_cnn")
    solution = solve(make, 1.0, sparse_nonzeros(make(1.0), "all", 0.0))
    assert (solution.width, solution.channels, solution.params) == (1.0, (25, 25, 25), 5210)
    assert solve(make, 0.5, 10**9).width == 0.5


def test_a_per_group_run_trains_records_its_channels_and_resumes_exactly(tmp_path, data_root):
    config = tiny_config("thin_dense", 0.95, epochs=2)
    result = run_one(config, tmp_path / "straight", data_root)
    summary = result["method_summary"]
    assert summary["channels"] == {"conv1": 3, "conv2": 5, "conv3": 4}
    assert summary["width"] is None and summary["target_params"] == 343
    counts = result["counts"]
    assert counts["params_total"] == counts["params_nonzero"] == summary["params"] == 342
    assert counts["params_dense"] == 5210 and counts["sparsity"] == (5210 - 342) / 5125
    # Interrupted after one epoch and resumed: the rebuilt model is the same shape and the run
    # ends with the same weights.
    with pytest.raises(Interrupted):
        run_one(config, tmp_path / "resumed", data_root, stop_after_epoch=1)
    run_one(config, tmp_path / "resumed", data_root)
    assert_identical(final_weights(tmp_path / "straight", config),
                     final_weights(tmp_path / "resumed", config))
