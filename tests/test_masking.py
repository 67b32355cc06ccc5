"""The shared masking component: layer policy, exact counts, ERK, the zero invariant."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from methods.masking import Masking, erk_densities, kept_count, prunable_layers


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


@pytest.mark.parametrize(
    ("policy", "names"),
    [
        ("all", ["conv", "fc1", "fc2"]),
        ("dense_first", ["fc1", "fc2"]),
        ("dense_last", ["conv", "fc1"]),
        ("dense_first_last", ["fc1"]),
    ],
)
def test_layer_policy_never_touches_bias_or_norm(policy, names):
    model = Tiny()
    masking = Masking.attach(model, policy)
    assert list(prunable_layers(model, policy)) == names
    assert list(masking.masks) == names
    buffers = {n for n, _ in model.named_buffers() if n.endswith("weight_mask")}
    assert buffers == {f"{n}.weight_mask" for n in names}


def test_kept_count_is_exact_for_awkward_sizes():
    assert kept_count(100, 0.1) == 10  # 0.9 * 100 must not floor to 89
    assert kept_count(1000, 0.05) == 50
    assert kept_count(7, 0.5) == 4  # floor(3.5) = 3 dropped
    assert kept_count(10, 1.0) == 10


def test_uniform_random_masks_have_exact_counts():
    model = Tiny()
    masking = Masking.attach(model, "all")
    counts = masking.init_random(0.1, "uniform", torch.Generator().manual_seed(0))
    expected = {n: m.weight.numel() - math.floor(0.9 * m.weight.numel() + 1e-9)
                for n, m in masking.layers.items()}
    assert counts == expected == masking.nonzero()
    for name, module in masking.layers.items():
        assert int((module.weight != 0).sum()) == expected[name]


def test_erk_matches_hand_computation_and_makes_small_layers_dense():
    # Raw ERK scores: sum(dims)/prod(dims). The 10x2 layer scores 0.6, far above the others,
    # so at 50% density its ERK density would exceed 1 and it must be made dense.
    shapes = {"a": (100, 100), "b": (100, 50), "c": (10, 2)}
    densities = erk_densities(shapes, 0.5)
    assert densities["c"] == 1.0
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    # Whole counts (RigL): sum(N - floor(0.5 N)) over a, b minus floor(0.5 N_c) for dense c.
    budget = (sizes["a"] - sizes["a"] // 2) + (sizes["b"] - sizes["b"] // 2) - sizes["c"] // 2
    eps = budget / (raw["a"] * sizes["a"] + raw["b"] * sizes["b"])
    assert densities["a"] == pytest.approx(eps * raw["a"], rel=1e-12)
    assert densities["b"] == pytest.approx(eps * raw["b"], rel=1e-12)
    kept = sum(densities[n] * sizes[n] for n in shapes)
    assert kept == pytest.approx(7510, rel=1e-12)


def test_erk_without_dense_layers_is_proportional_to_raw_score():
    shapes = {"a": (64, 64, 3, 3), "b": (128, 64, 3, 3)}
    d = erk_densities(shapes, 0.1)
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    ratio = raw["a"] / raw["b"]
    assert d["a"] / d["b"] == pytest.approx(ratio)
    # The budget is whole per-layer counts (RigL): (36864 - 33177) + (73728 - 66355) = 11060,
    # not 0.1 * 110592 = 11059.2.
    assert sum(d[n] * math.prod(s) for n, s in shapes.items()) == pytest.approx(11060)


@pytest.mark.parametrize("model, input_shape, target, per_layer", [
    # RigL's sparse_utils on these shapes (issue 11): our old density * total budget kept
    # 59/100/100/255 at 0.9, 258 at 0.95 and 15,473 on resnet8 at 0.8.
    ("mnist1d_cnn", (1, 40), 0.9, [59, 101, 101, 256]),
    ("mnist1d_cnn", (1, 40), 0.95, [30, 51, 51, 129]),
    ("resnet8", (3, 32, 32), 0.8, [432, 1033, 1033, 1467, 1902, 512, 2771, 3641, 2048, 640]),
])
def test_erk_counts_are_rigls(model, input_shape, target, per_layer):
    from bench.models import build_model

    masking = Masking.attach(build_model(model, 10, input_shape), "all")
    counts = masking.init_random(1 - target, "erk", torch.Generator().manual_seed(0))
    assert list(counts.values()) == per_layer == list(masking.nonzero().values())
    assert sum(per_layer) == {0.9: 517, 0.95: 261, 0.8: 15_479}[target]


def test_erk_makes_every_layer_tied_at_the_top_dense_at_once():
    # b and c tie at raw 0.6; the reference moves both into the dense set in one iteration.
    # Budget for a: (10000 - 5000) - 10 - 10 = 4980 = eps * 0.02 * 10000.
    d = erk_densities({"a": (100, 100), "b": (10, 2), "c": (2, 10)}, 0.5)
    assert d == {"a": pytest.approx(0.498), "b": 1.0, "c": 1.0}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_weights_are_exactly_zero_after_every_step(optimizer):
    from methods.static import Static
    from tests.helpers import tiny_config

    torch.manual_seed(0)
    model = Tiny()
    masking = Masking.attach(model, "all")
    method = Static(tiny_config("static", 0.9), None)
    method.masking = masking
    masking.init_random(0.1, "uniform", method.generator)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
           if optimizer == "sgd" else
           torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4))
    for step in range(1, 6):
        x, y = torch.randn(16, 3, 6, 6), torch.randint(10, (16,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        method.after_backward(model, step)
        opt.step()
        method.after_step(model, opt, step)
        for name, module in masking.layers.items():
            mask = masking.masks[name]
            assert torch.count_nonzero(module.weight[~mask]) == 0
            # Gradient masking keeps optimizer state off pruned positions too.
            for value in opt.state[module.weight].values():
                if torch.is_tensor(value) and value.shape == mask.shape:
                    assert torch.count_nonzero(value[~mask]) == 0


def test_global_top_k_from_scores_keeps_exactly_k():
    model = Tiny()
    masking = Masking.attach(model, "dense_last")
    scores = {n: torch.rand_like(m.weight) for n, m in masking.layers.items()}
    total = masking.total()
    masking.init_from_scores(scores, kept_count(total, 0.2))
    assert sum(masking.nonzero().values()) == kept_count(total, 0.2)
    threshold = torch.cat([scores[n][masking.masks[n]] for n in scores]).min()
    dropped = torch.cat([scores[n][~masking.masks[n]] for n in scores]).max()
    assert threshold > dropped
