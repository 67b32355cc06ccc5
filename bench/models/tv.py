"""Any torchvision classification model by name (``tv:resnet18``, ``tv:mobilenet_v2``, ...), built
with ``torchvision.models.get_model(name, weights=None, num_classes=C)``: torchvision's own
architecture and initialisation, so users are not limited to the registered list.

Input channels come from the dataset: when they are not 3, the first Conv2d (the stem) is
replaced by one with the dataset's channels and otherwise the same settings; it keeps PyTorch's
default Conv2d initialisation. GoogLeNet and Inception-v3 are built without their auxiliary heads
(the trainer takes one output per batch) and with torchvision's own initialisation requested
explicitly (``init_weights=True``, which is what weights=None gives, minus the warning).

Width groups (for thin dense) are inferred for the ResNet family with plain convolutions
(resnet18/34/50/101/152, wide_resnet50_2, wide_resnet101_2): one group per stage, the stem tied to
stage 1 as in ``bench.models.resnet``, rebuilt with ``bench.models.resnet.torchvision_resnet``,
which is torchvision's model at the base widths. Every other model declares thin dense unsupported
and says why: torchvision exposes a width knob for few of them, and those knobs round channels
to multiples of 8 (MobileNet, EfficientNet, MNASNet) or floor grouped widths (ResNeXt), which
makes the parameter count no polynomial of the widths (``methods/thin_dense.py`` solves that
polynomial).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from bench.errors import UserError

PREFIX = "tv:"
# torchvision's defaults give these an auxiliary classifier (a tuple output in training) and a
# warning about its init; the trainer needs one output.
EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class TorchvisionModel:
    arch: str
    build: Callable[[int, tuple[int, ...], tuple[int, ...]], nn.Module]
    groups: tuple[tuple[str, int], ...]
    no_width_reason: str


@cache
def classification_models() -> tuple[str, ...]:
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _check_images(arch: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise UserError(f"model {PREFIX}{arch} takes images (channels, height, width); the dataset "
                        f"gives examples of shape {tuple(input_shape)}")


def _replace_stem(model: nn.Module, arch: str, in_channels: int) -> None:
    """Give the first Conv2d `in_channels` inputs (a new conv, PyTorch's default init)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels == in_channels:
                return
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                            m.dilation, 1, m.bias is not None, m.padding_mode)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
            return
    raise UserError(f"model {PREFIX}{arch} has no Conv2d stem to give {in_channels} input "
                    f"channels; use a dataset with 3 channels")


def _generic(arch: str) -> Callable[[int, tuple[int, ...], tuple[int, ...]], nn.Module]:
    def build(num_classes: int, input_shape: tuple[int, ...], channels: tuple[int, ...]):
        import torchvision.models

        _check_images(arch, input_shape)
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                             **EXTRA_KWARGS.get(arch, {}))
        _replace_stem(model, arch, input_shape[0])
        return model

    return build


def _resnet_family(arch: str, block: type, layers: tuple[int, ...], width_per_group: int
                   ) -> Callable[[int, tuple[int, ...], tuple[int, ...]], nn.Module]:
    def build(num_classes: int, input_shape: tuple[int, ...], channels: tuple[int, ...]):
        from bench.models.resnet import torchvision_resnet

        _check_images(arch, input_shape)
        return torchvision_resnet(block, layers, num_classes, input_shape, channels,
                                  width_per_group)

    return build


@cache
def torchvision_model(name: str) -> TorchvisionModel:
    """The builder, width groups and (when there are none) the reason, for ``tv:ARCH``.

    Raises UserError for a name that is not a torchvision classification model."""
    arch = name[len(PREFIX):]
    if arch not in classification_models():
        raise UserError(f"unknown torchvision classification model {arch!r} in {name!r}; valid: "
                        f"{PREFIX} followed by one of {', '.join(classification_models())}")
    import torchvision.models

    builder = torchvision.models.get_model_builder(arch)
    if builder.__module__ == "torchvision.models.resnet":
        # Built on meta (shapes only) to read its block type, depth and grouping.
        with torch.device("meta"):
            probe = builder(weights=None)
        if probe.groups == 1 and probe.base_width % 64 == 0:
            block = type(probe.layer1[0])
            layers = tuple(len(getattr(probe, s)) for s in STAGES)
            # A stage's planes: its last block's input is planes * expansion wide.
            groups = tuple((s, getattr(probe, s)[-1].conv1.in_channels // block.expansion)
                           for s in STAGES)
            return TorchvisionModel(arch, _resnet_family(arch, block, layers, probe.base_width),
                                    groups, "")
        reason = (f"{name} uses grouped convolutions whose widths torchvision floors "
                  f"(int(planes * width_per_group / 64) * groups), so its parameter count is no "
                  f"polynomial of the stage widths")
    else:
        reason = (f"torchvision exposes no per-layer channel counts for {name}; thin dense "
                  f"supports the tv: ResNets (resnet18-152, wide_resnet50_2, wide_resnet101_2) "
                  f"and the registered models")
    return TorchvisionModel(arch, _generic(arch), (), reason)


def is_torchvision_name(name: str) -> bool:
    return name.startswith(PREFIX)

