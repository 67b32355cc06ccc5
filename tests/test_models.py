"""The registered models: ResNet-50 at any width (torchvision's model and initialisation at full
width, the same init scheme when thinned, the stem following the data's channels); the papers'
models pinned to their published parameter and MAC counts, reference structure and init; and
torchvision models by name (``tv:NAME``). What every model must do is in
tests/test_model_contract.py."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.models import resnet50 as torchvision_resnet50

from bench.errors import UserError
from bench.flops import count
from bench.models import build_model, get_model_spec


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


# --- the papers' models: published counts, reference structure and initialisation -----------

# (model, classes, params, conv + Linear weights or None, MACs on the example input or None);
# sources: reference/flops-and-performance.md §A.6 and the docstrings of bench/models/*.
PUBLISHED = [
    ("wrn28_2", 10, 1_467_610, None, 214_353_152),
    ("wrn22_2", 10, 1_079_642, None, 157_730_048),
    ("vgg19_grasp", 10, 20_035_018, None, 398_136_320),
    ("vgg19_grasp", 100, 20_081_188, None, None),
    ("vgg16_grasp", 10, 14_724_042, None, 313_201_664),
    ("resnet32_grasp", 10, 1_860_522, None, 275_612_928),
    ("resnet32_grasp", 100, 1_872_132, None, None),
    ("resnet32_eigendamage", 10, 7_427_914, None, 1_100_679_680),
    # STR's classifier is a 1x1 conv without bias: 4,209,088 weights as STR's README (4.21 M),
    # 1,000 params fewer than the 4,231,976 quoted for MobileNetV1 with a biased classifier.
    ("mobilenet_v1", 1000, 4_230_976, 4_209_088, 568_740_352),
    ("resnet50", 1000, 25_557_032, 25_502_912, 4_089_184_256),
]


@pytest.mark.parametrize(("name", "classes", "params", "weights", "macs"), PUBLISHED)
def test_published_parameter_and_mac_counts(name, classes, params, weights, macs):
    shape = get_model_spec(name).example[1]
    with torch.device("meta"):
        model = build_model(name, classes, shape)
    counts = count(model, shape)
    assert counts.params_total == params
    if weights is not None:
        assert sum(layer.params for layer in counts.layers) == weights
    if macs is not None:
        assert counts.macs_dense == macs


def _kinds(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_wrn28_2_is_dsrs_preactivation_network():
    torch.manual_seed(0)
    model = build_model("wrn28_2", 10, (3, 32, 32))
    shortcuts = [b.shortcut for b in model.blocks if b.shortcut is not None]
    # One 1x1 shortcut conv per stage, on its first block: 16->32, 32->64 (s2), 64->128 (s2).
    assert [tuple(s.weight.shape[:2]) + s.stride for s in shortcuts] == [
        (32, 16, 1, 1), (64, 32, 2, 2), (128, 64, 2, 2)]
    assert model.conv1.out_channels == 16 and len(model.blocks) == 12
    # DSR's init: conv ~ N(0, 2 / (k k c_out)); Linear bias 0.
    conv = model.blocks[5].conv2  # 3x3, 64 -> 64
    assert abs(conv.weight.std().item() / math.sqrt(2 / (9 * 64)) - 1) < 0.05
    assert torch.equal(model.fc.bias, torch.zeros(10))
    # Pre-activation: BN-ReLU feeds the residual branch and the shortcut conv of a widening
    # block; a block of equal widths adds its raw input.
    model.eval()
    x = torch.randn(2, 16, 8, 8)
    f = nn.functional
    for block, inp in ((model.blocks[0], x), (model.blocks[1], torch.randn(2, 32, 8, 8))):
        with torch.no_grad():
            for bn in (block.bn1, block.bn2):
                bn.running_mean.uniform_(-1, 1)
                bn.weight.uniform_(0.5, 1.5)
            a = f.relu(block.bn1(inp))
            branch = block.conv2(f.relu(block.bn2(block.conv1(a))))
            skip = block.shortcut(a) if block.shortcut is not None else inp
            assert torch.equal(block(inp), branch + skip)


def _wrn_params(depth: int, c1: int, c2: int, c3: int, classes: int = 10) -> int:
    """WRN parameters written from DSR's model.py: 16-channel 3x3 stem on RGB; per block BN(c_in),
    3x3 c_in->c_out, BN(c_out), 3x3 c_out->c_out, and a 1x1 shortcut on each stage's first
    block; final BN and Linear."""
    n = (depth - 4) // 6
    total = 27 * 16
    c_in = 16
    for c_out in (c1, c2, c3):
        for i in range(n):
            total += 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out
            total += c_in * c_out if i == 0 else 0
            c_in = c_out
    return total + 2 * c3 + c3 * classes + classes


@pytest.mark.parametrize(("name", "depth"), [("wrn28_2", 28), ("wrn22_2", 22)])
def test_wrn_widths_scale_the_stages_and_keep_the_16_channel_stem(name, depth):
    assert _wrn_params(28, 32, 64, 128) == 1_467_610 and _wrn_params(22, 32, 64, 128) == 1_079_642
    with torch.device("meta"):
        thin = build_model(name, 10, (3, 32, 32), channels=(16, 40, 100))
        half = build_model(name, 10, (3, 32, 32), 0.5)
    assert thin.conv1.out_channels == half.conv1.out_channels == 16
    assert sum(p.numel() for p in thin.parameters()) == _wrn_params(depth, 16, 40, 100)
    # Width 0.5 of WRN-d-2 is WRN-d-1 plus stage 1's 16x16 shortcut conv (see bench/models/wrn).
    assert sum(p.numel() for p in half.parameters()) == _wrn_params(depth, 16, 32, 64)


def test_wrn22_2_applies_rigls_dropout_in_training_only():
    torch.manual_seed(0)
    model = build_model("wrn22_2", 10, (3, 32, 32))
    assert all(b.dropout == 0.3 for b in model.blocks) and len(model.blocks) == 9
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert not torch.equal(first, model(x))


@pytest.mark.parametrize(("name", "convs"), [("vgg19_grasp", 16), ("vgg16_grasp", 13)])
def test_vgg_is_graps_cfg_with_its_init(name, convs):
    torch.manual_seed(0)
    model = build_model(name, 100, (3, 32, 32))
    conv_layers = _kinds(model, nn.Conv2d)
    assert len(conv_layers) == convs and all(c.bias is None for c in conv_layers)
    assert len(_kinds(model, nn.BatchNorm2d)) == convs
    assert len(_kinds(model, nn.MaxPool2d)) == 4
    (linear,) = _kinds(model, nn.Linear)
    assert linear.weight.shape == (100, 512)
    # GraSP weights_init: Linear N(0, 0.01), conv He normal fan-out.
    assert abs(linear.weight.std().item() / 0.01 - 1) < 0.05
    assert torch.equal(linear.bias, torch.zeros(100))
    last = conv_layers[-1]  # 3x3, 512 -> 512
    assert abs(last.weight.std().item() / math.sqrt(2 / (9 * 512)) - 1) < 0.02


@pytest.mark.parametrize(("name", "widths", "fc_std"), [
    ("resnet32_grasp", (32, 64, 128), 0.01),  # GraSP: Linear N(0, 0.01)
    ("resnet32_eigendamage", (64, 128, 256), math.sqrt(2 / 256)),  # He fan-in on the Linear
])
def test_resnet32_variants_have_their_papers_widths_and_init(name, widths, fc_std):
    torch.manual_seed(0)
    model = build_model(name, 10, (3, 32, 32))
    assert len(model.blocks) == 15
    assert [model.blocks[5 * s].conv2.out_channels for s in range(3)] == list(widths)
    projections = [b.shortcut[0] for b in model.blocks if isinstance(b.shortcut, nn.Sequential)]
    assert [tuple(p.weight.shape[:2]) for p in projections] == [
        (widths[1], widths[0]), (widths[2], widths[1])]
    assert abs(model.fc.weight.std().item() / fc_std - 1) < 0.1
    assert torch.equal(model.fc.bias, torch.zeros(10))


def test_mobilenet_v1_is_strs():
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", 1000, (3, 224, 224))
    convs = _kinds(model, nn.Conv2d)
    assert len(convs) == 28 and all(c.bias is None for c in convs)
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 13 and all(c.groups == c.in_channels == c.out_channels
                                        for c in depthwise)
    assert [c.stride[0] for c in depthwise] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert model.fc.weight.shape == (1000, 1024, 1, 1)
    # STR's builder.conv1x1: He normal, fan-in; 1024 inputs.
    assert abs(model.fc.weight.std().item() / math.sqrt(2 / 1024) - 1) < 0.02
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_tv_resnet18_is_torchvisions_including_its_init():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    theirs = resnet18(num_classes=10)
    their_rng = torch.get_rng_state()
    torch.manual_seed(0)
    ours = build_model("tv:resnet18", 10, (3, 32, 32))
    assert torch.equal(torch.get_rng_state(), their_rng)
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tv_model_at_base_is_get_model_and_takes_the_datas_channels():
    from torchvision.models import get_model

    torch.manual_seed(0)
    theirs = get_model("mobilenet_v2", weights=None, num_classes=10)
    torch.manual_seed(0)
    ours = build_model("tv:mobilenet_v2", 10, (3, 32, 32))
    for (k, a), (_, b) in zip(theirs.state_dict().items(), ours.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    gray = build_model("tv:mobilenet_v2", 10, (1, 28, 28))
    assert gray.features[0][0].in_channels == 1 and gray.features[0][0].out_channels == 32
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(("name", "shape", "message"), [
    ("tv:nosuch", (3, 32, 32), "unknown torchvision classification model 'nosuch'"),
    ("tv:resnet18", (40,), "takes images (channels, height, width); the dataset gives examples "
                           "of shape (40,)"),
])
def test_tv_bad_names_and_shapes_are_user_errors(name, shape, message):
    with pytest.raises(UserError) as error:
        build_model(name, 10, shape)
    assert message in str(error.value)


def test_width_on_a_model_without_width_groups_is_refused():
    with pytest.raises(UserError, match=r"tv:resnext50_32x4d has no width knob \(.*floors"):
        build_model("tv:resnext50_32x4d", 10, (3, 32, 32), 0.5)


def test_thin_dense_with_a_model_without_width_groups_is_a_grid_error(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\n[axes]\nmodels = ["tv:mobilenet_v2"]\ndatasets = ["cifar10"]\n'
                    'methods = ["thin_dense"]\nsparsities = [0.9]\nseeds = [0]\n')
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(grid), "--dry-run",
                           "--root", str(tmp_path / "root")],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "method 'thin_dense' needs a model with width groups; " \
        "tv:mobilenet_v2 has none: torchvision exposes no per-layer channel counts" in lines[0]
    assert not (tmp_path / "root").exists()


def test_list_models_shows_every_registered_model_and_tv(capsys):
    from bench.cli import main
    from bench.models import MODELS

    assert main(["list", "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [*sorted(MODELS), "tv:NAME"]
    assert {"wrn28_2", "wrn22_2", "vgg19_grasp", "vgg16_grasp", "resnet32_grasp",
            "resnet32_eigendamage", "mobilenet_v1"} <= set(MODELS)
