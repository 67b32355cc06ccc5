"""Model registry: name -> builder(num_classes, input_shape, width). Variants are pinned by
name (e.g. ``lenet5_caffe`` is the 431K-parameter Caffe LeNet-5, not the classic 61K one)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bench.errors import UserError
from bench.models.lenet import LeNet5Caffe, LeNet300100
from bench.models.mnist1d import MNIST1DCNN, MNIST1DMLP
from bench.models.resnet import CifarResNet, resnet50


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    description: str
    has_width: bool = True


def _mnist1d(cls):
    return lambda num_classes, input_shape, width: cls(num_classes, input_shape[-1], width)


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("mnist1d_cnn", _mnist1d(MNIST1DCNN), "MNIST-1D reference CNN (5,210 params)"),
        ModelSpec("mnist1d_mlp", _mnist1d(MNIST1DMLP), "MNIST-1D reference MLP (15,210 params)"),
        ModelSpec("lenet300_100", lambda c, s, w: LeNet300100(c, s, w),
                  "LeNet-300-100 (266,610 params on 28x28)"),
        ModelSpec("lenet5_caffe", lambda c, s, w: LeNet5Caffe(c, s, w),
                  "LeNet-5 Caffe variant (431,080 params on 28x28)"),
        ModelSpec("resnet8", lambda c, s, w: CifarResNet(8, c, s, w),
                  "CIFAR ResNet-8, widths 16-32-64, projection shortcuts"),
        ModelSpec("resnet20", lambda c, s, w: CifarResNet(20, c, s, w),
                  "CIFAR ResNet-20, widths 16-32-64, projection shortcuts"),
        ModelSpec("resnet50", lambda c, s, w: resnet50(c, s, w),
                  "torchvision ResNet-50 v1.5 (25,557,032 params)"),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}") from None


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...],
                width: float = 1.0) -> nn.Module:
    return get_model_spec(name).build(num_classes, tuple(input_shape), width)
