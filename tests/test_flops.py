"""Parameter and MAC counts against published numbers, and density scaling."""

from __future__ import annotations

import torch

from bench.flops import StepCost, count
from bench.models import build_model
from methods.masking import Masking


def test_lenet_300_100_counts():
    model = build_model("lenet300_100", 10, (1, 28, 28))
    c = count(model, (1, 28, 28))
    assert c.params_total == 266_610
    assert c.macs_dense == 266_200
    assert c.flops == 2 * c.macs


def test_lenet5_caffe_counts():
    c = count(build_model("lenet5_caffe", 10, (1, 28, 28)), (1, 28, 28))
    assert c.params_total == 431_080
    assert c.macs_dense == 2_293_000


def test_resnet50_v1_5_counts():
    model = build_model("resnet50", 1000, (3, 224, 224))
    c = count(model, (3, 224, 224))
    assert c.params_total == 25_557_032
    assert c.macs_dense == 4_089_184_256


def test_mnist1d_reference_models():
    assert count(build_model("mnist1d_cnn", 10, (40,)), (40,)).params_total == 5_210
    assert count(build_model("mnist1d_mlp", 10, (40,)), (40,)).params_total == 15_210


def test_a_layer_at_density_d_contributes_d_times_its_dense_macs():
    model = build_model("mnist1d_cnn", 10, (40,))
    masking = Masking.attach(model, "all")
    masking.init_random(0.25, "uniform", torch.Generator().manual_seed(0))
    c = count(model, (40,))
    for layer in c.layers:
        assert layer.macs * layer.params == layer.macs_dense * layer.nonzero
    # conv2: 25*25*3 = 1875 weights, 10 output positions; keeps 1875 - floor(0.75*1875) = 469.
    conv2 = next(layer for layer in c.layers if layer.name == "conv2")
    assert (conv2.params, conv2.nonzero, conv2.positions, conv2.macs) == (1875, 469, 10, 4690)
    assert c.params_nonzero == c.params_total - sum(l.params - l.nonzero for l in c.layers)
    assert abs(c.sparsity - (1 - sum(l.nonzero for l in c.layers) / c.params_prunable)) < 1e-12


def test_step_cost_follows_masks_as_they_change():
    model = build_model("mnist1d_mlp", 10, (40,))
    masking = Masking.attach(model, "all")
    cost = StepCost(model, (40,))
    assert float(cost.forward_macs()) == count(model, (40,)).macs_dense
    masking.init_random(0.1, "uniform", torch.Generator().manual_seed(0))
    assert float(cost.forward_macs()) == count(model, (40,)).macs
    assert float(cost.train_flops(100)) == 3 * 2 * count(model, (40,)).macs * 100


def test_step_cost_is_computed_once_per_mask_state():
    """The per-step FLOPs tensor is reused while no mask changed (no tensor op per step) and
    recomputed after any in-place mask write: set_mask, load_state_dict."""
    model = torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.Linear(4, 3))
    masking = Masking.attach(model, "all")
    cost = StepCost(model, (10,))
    first = cost.train_flops(5)
    assert float(first) == 3 * 2 * (40 + 12) * 5
    assert cost.train_flops(5) is first  # cached, not recomputed
    assert float(cost.train_flops(2)) == 3 * 2 * 52 * 2 and cost.train_flops(5) is first
    half = torch.zeros(4, 10, dtype=torch.bool)
    half[:2] = True
    masking.set_mask("0", half)
    assert float(cost.train_flops(5)) == 3 * 2 * (20 + 12) * 5
    state = model.state_dict()
    state["1.weight_mask"] = torch.zeros(3, 4, dtype=torch.bool)
    model.load_state_dict(state)
    assert float(cost.train_flops(5)) == 3 * 2 * 20 * 5
