"""ResNet-50 at any width: torchvision's model and initialisation at full width, the same init
scheme when thinned, and the stem follows the data's channels."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models import resnet50 as torchvision_resnet50

from bench.models import build_model


def test_full_width_resnet50_is_torchvisions_including_its_init():
    torch.manual_seed(0)
    theirs = torchvision_resnet50()
    their_rng = torch.get_rng_state()
    torch.manual_seed(0)
    ours = build_model("resnet50", 1000, (3, 224, 224))
    assert torch.equal(torch.get_rng_state(), their_rng)  # same draws, same order
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_thin_resnet50_gets_the_same_init_scheme():
    torch.manual_seed(1)
    model = build_model("resnet50", 10, (3, 64, 64), channels=(16, 32, 64, 128))
    conv = model.layer3[0].conv2  # 3x3, 64 -> 64: fan_out = 64 * 9
    assert conv.weight.shape == (64, 64, 3, 3)
    expected_std = math.sqrt(2.0 / (64 * 9))  # He et al., fan-out mode, ReLU gain
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_resnet50_stem_takes_the_datas_channels():
    model = build_model("resnet50", 10, (1, 64, 64), channels=(8, 16, 32, 64))
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
