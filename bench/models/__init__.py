"""Model registry: name -> builder(num_classes, input_shape, channels) and the model's width
groups. Variants are pinned by name (e.g. ``lenet5_caffe`` is the 431K-parameter Caffe LeNet-5,
not the classic 61K one).

A width group is a set of layer widths the architecture forces to be equal (a residual sum ties
its operands); different groups may take any positive channel counts independently. Each spec
lists its groups with their base channel counts, in the order its builder takes them. The width
multiplier ``w`` of ``ModelConfig`` maps to ``max(1, round(base * w))`` channels in every group;
``build_model(..., channels=...)`` and ``ModelMaker.with_channels`` build explicit counts (thin
dense sizes each group on its own to match a parameter budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from bench.errors import UserError
from bench.models.lenet import LeNet5Caffe, LeNet300100
from bench.models.mnist1d import MNIST1DCNN, MNIST1DMLP
from bench.models.resnet import RESNET50_PLANES, CifarResNet, resnet50

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


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("mnist1d_cnn", _mnist1d_cnn, "MNIST-1D reference CNN (5,210 params)",
                  (("conv1", 25), ("conv2", 25), ("conv3", 25))),
        ModelSpec("mnist1d_mlp", _mnist1d_mlp, "MNIST-1D reference MLP (15,210 params)",
                  (("hidden", 100),)),
        ModelSpec("lenet300_100", lambda c, s, ch: LeNet300100(c, s, ch),
                  "LeNet-300-100 (266,610 params on 28x28)", (("fc1", 300), ("fc2", 100))),
        ModelSpec("lenet5_caffe", lambda c, s, ch: LeNet5Caffe(c, s, ch),
                  "LeNet-5 Caffe variant (431,080 params on 28x28)",
                  (("conv1", 20), ("conv2", 50), ("fc3", 500))),
        ModelSpec("resnet8", lambda c, s, ch: CifarResNet(8, c, s, ch),
                  "CIFAR ResNet-8, widths 16-32-64, projection shortcuts",
                  (("stage1", 16), ("stage2", 32), ("stage3", 64))),
        ModelSpec("resnet20", lambda c, s, ch: CifarResNet(20, c, s, ch),
                  "CIFAR ResNet-20, widths 16-32-64, projection shortcuts",
                  (("stage1", 16), ("stage2", 32), ("stage3", 64))),
        ModelSpec("resnet50", lambda c, s, ch: resnet50(c, s, ch),
                  "torchvision ResNet-50 v1.5 (25,557,032 params)",
                  tuple((f"layer{i + 1}", p) for i, p in enumerate(RESNET50_PLANES))),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}") from None


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...],
                width: float | None = None, *, channels: Sequence[int] | None = None
                ) -> nn.Module:
    """The model at width multiplier `width` (default 1), or at explicit per-group `channels`
    (in the order of ``get_model_spec(name).groups``); not both."""
    spec = get_model_spec(name)
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
