"""Model registry: name -> builder(num_classes, input_shape, channels) and the model's width
groups. Variants are pinned by name (e.g. ``lenet5_caffe`` is the 431K-parameter Caffe LeNet-5,
not the classic 61K one).

A width group is a set of layer widths the architecture forces to be equal (a residual sum ties
its operands); different groups may take any positive channel counts independently. Each spec
lists its groups with their base channel counts, in the order its builder takes them. The width
multiplier ``w`` of ``ModelConfig`` maps to ``max(1, round(base * w))`` channels in every group;
``build_model(..., channels=...)`` and ``ModelMaker.with_channels`` build explicit counts (thin
dense sizes each group on its own to match a parameter budget).

Each spec also names the input its published counts are for (``example``: classes and input
shape of its dataset), which the model contract test (tests/test_model_contract.py) builds it
on. ``tv:NAME`` is any torchvision classification model (``bench.models.tv``); its spec is made
on first use. A model without width groups says why (``no_width_reason``), and thin dense
refuses it with that reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from bench.errors import UserError
from bench.models.inits import eigendamage_init, grasp_init
from bench.models.lenet import LeNet5Caffe, LeNet300100
from bench.models.mnist1d import MNIST1DCNN, MNIST1DMLP
from bench.models.mobilenet import BLOCKS as MOBILENET_BLOCKS
from bench.models.mobilenet import STEM_WIDTH, MobileNetV1
from bench.models.resnet import RESNET50_PLANES, CifarResNet, resnet50
from bench.models.tv import is_torchvision_name, torchvision_model
from bench.models.vgg import VGG, VGG_STAGE_WIDTHS
from bench.models.wrn import WideResNet

Channels = tuple[int, ...]


def scaled(base: int, width: float) -> int:
    """Channels of a group with `base` channels at width multiplier `width`."""
    return max(1, int(round(base * width)))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # (num_classes, input_shape, channels) -> model; channels has one count per group.
    build: Callable[[int, tuple[int, ...], Channels], nn.Module]
    description: str
    # (group name, base channel count) per independent width group; empty = no width knob.
    groups: tuple[tuple[str, int], ...] = ()
    # (num_classes, input_shape) of the dataset its published counts are for.
    example: tuple[int, tuple[int, ...]] = (10, (3, 32, 32))
    # Why the model has no width groups (thin dense cannot build it); "" when it has some.
    no_width_reason: str = ""

    @property
    def has_width(self) -> bool:
        return bool(self.groups)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.groups)

    @property
    def base_channels(self) -> Channels:
        return tuple(base for _, base in self.groups)

    def channels(self, width: float) -> Channels:
        """The channel counts the width multiplier `width` builds."""
        return tuple(scaled(base, width) for base in self.base_channels)

    def check_channels(self, channels: Sequence[int]) -> Channels:
        out = tuple(int(c) for c in channels)
        if len(out) != len(self.groups) or any(c < 1 or c != x for c, x in zip(out, channels,
                                                                              strict=True)):
            raise UserError(f"model {self.name} takes {len(self.groups)} positive integer "
                            f"channel counts ({', '.join(self.group_names)}), got {channels!r}")
        return out


def _mnist1d_cnn(num_classes, input_shape, channels):
    return MNIST1DCNN(num_classes, input_shape[-1], channels)


def _mnist1d_mlp(num_classes, input_shape, channels):
    return MNIST1DMLP(num_classes, input_shape[-1], channels[0])


def _with_init(model: nn.Module, init) -> nn.Module:
    model.apply(init)
    return model


CIFAR10 = (10, (3, 32, 32))
MNIST = (10, (1, 28, 28))
IMAGENET = (1000, (3, 224, 224))
WRN_GROUPS = (("stage1", 32), ("stage2", 64), ("stage3", 128))  # the stem stays at 16
VGG_GROUPS = tuple((f"stage{i + 1}", w) for i, w in enumerate(VGG_STAGE_WIDTHS))
MOBILENET_GROUPS = (("stem", STEM_WIDTH),
                    *((f"pw{i + 1}", w) for i, (w, _) in enumerate(MOBILENET_BLOCKS)))

MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("mnist1d_cnn", _mnist1d_cnn, "MNIST-1D reference CNN (5,210 params)",
                  (("conv1", 25), ("conv2", 25), ("conv3", 25)), example=(10, (40,))),
        ModelSpec("mnist1d_mlp", _mnist1d_mlp, "MNIST-1D reference MLP (15,210 params)",
                  (("hidden", 100),), example=(10, (40,))),
        ModelSpec("lenet300_100", lambda c, s, ch: LeNet300100(c, s, ch),
                  "LeNet-300-100 (266,610 params on 28x28)", (("fc1", 300), ("fc2", 100)),
                  example=MNIST),
        ModelSpec("lenet5_caffe", lambda c, s, ch: LeNet5Caffe(c, s, ch),
                  "LeNet-5 Caffe variant (431,080 params on 28x28)",
                  (("conv1", 20), ("conv2", 50), ("fc3", 500)), example=MNIST),
        ModelSpec("resnet8", lambda c, s, ch: CifarResNet(8, c, s, ch),
                  "CIFAR ResNet-8, widths 16-32-64, projection shortcuts",
                  (("stage1", 16), ("stage2", 32), ("stage3", 64)), example=CIFAR10),
        ModelSpec("resnet20", lambda c, s, ch: CifarResNet(20, c, s, ch),
                  "CIFAR ResNet-20, widths 16-32-64, projection shortcuts",
                  (("stage1", 16), ("stage2", 32), ("stage3", 64)), example=CIFAR10),
        ModelSpec("resnet50", lambda c, s, ch: resnet50(c, s, ch),
                  "torchvision ResNet-50 v1.5 (25,557,032 params)",
                  tuple((f"layer{i + 1}", p) for i, p in enumerate(RESNET50_PLANES)),
                  example=IMAGENET),
        ModelSpec("wrn28_2", lambda c, s, ch: WideResNet(28, c, s, ch),
                  "Wide ResNet-28-2 of DSR, pre-activation (1,467,610 params on CIFAR-10)",
                  WRN_GROUPS, example=CIFAR10),
        ModelSpec("wrn22_2", lambda c, s, ch: WideResNet(22, c, s, ch, dropout=0.3),
                  "Wide ResNet-22-2 of RigL, dropout 0.3 (1,079,642 params on CIFAR-10)",
                  WRN_GROUPS, example=CIFAR10),
        ModelSpec("vgg19_grasp", lambda c, s, ch: VGG(19, c, s, ch),
                  "VGG-19 of GraSP/EigenDamage, BN, one Linear (20,035,018 params on CIFAR-10)",
                  VGG_GROUPS, example=CIFAR10),
        ModelSpec("vgg16_grasp", lambda c, s, ch: VGG(16, c, s, ch),
                  "VGG-16 of GraSP/EigenDamage, BN, one Linear (14,724,042 params on CIFAR-10)",
                  VGG_GROUPS, example=CIFAR10),
        ModelSpec("resnet32_grasp",
                  lambda c, s, ch: _with_init(CifarResNet(32, c, s, ch), grasp_init),
                  "CIFAR ResNet-32 of GraSP, widths 32-64-128 (1,860,522 params on CIFAR-10)",
                  (("stage1", 32), ("stage2", 64), ("stage3", 128)), example=CIFAR10),
        ModelSpec("resnet32_eigendamage",
                  lambda c, s, ch: _with_init(CifarResNet(32, c, s, ch), eigendamage_init),
                  "CIFAR ResNet-32 of EigenDamage, widths 64-128-256 (7,427,914 params)",
                  (("stage1", 64), ("stage2", 128), ("stage3", 256)), example=CIFAR10),
        ModelSpec("mobilenet_v1", lambda c, s, ch: MobileNetV1(c, s, ch),
                  "MobileNetV1 1.0 of STR (4,209,088 weights, 568,740,352 MACs at 224x224)",
                  MOBILENET_GROUPS, example=IMAGENET),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    """The registered spec, or for ``tv:ARCH`` one made from torchvision's model (UserError for
    an unknown name)."""
    if is_torchvision_name(name):
        tv = torchvision_model(name)
        return ModelSpec(name, tv.build, f"torchvision {tv.arch} (get_model, weights=None)",
                         tv.groups, example=IMAGENET, no_width_reason=tv.no_width_reason)
    from bench.plugins import lookup

    return lookup(name, MODELS, "sparsebench.models", ModelSpec, "model",
                  ", or tv:NAME for a torchvision classification model")


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...],
                width: float | None = None, *, channels: Sequence[int] | None = None
                ) -> nn.Module:
    """The model at width multiplier `width` (default 1), or at explicit per-group `channels`
    (in the order of ``get_model_spec(name).groups``); not both."""
    spec = get_model_spec(name)
    if not spec.has_width and (channels or (width is not None and width != 1.0)):
        raise UserError(f"model {name} has no width knob ({spec.no_width_reason}); "
                        f"use width 1")
    if channels is None:
        chosen = spec.channels(1.0 if width is None else width)
    elif width is not None:
        raise ValueError("give a width or channels, not both")
    else:
        chosen = spec.check_channels(channels)
    return spec.build(num_classes, tuple(input_shape), chosen)


@dataclass(frozen=True)
class ModelMaker:
    """One configured architecture (model name, classes, input shape) that can be built at any
    width or at explicit channel counts. It is the ``make_model`` ``Method.build_model``
    receives: ``make_model(width)`` is ``build_model(name, num_classes, input_shape, width)``."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]

    @property
    def spec(self) -> ModelSpec:
        return get_model_spec(self.name)

    def __call__(self, width: float) -> nn.Module:
        return build_model(self.name, self.num_classes, self.input_shape, width)

    def with_channels(self, channels: Sequence[int]) -> nn.Module:
        return build_model(self.name, self.num_classes, self.input_shape, channels=channels)
