"""MobileNetV1 1.0 as STR trains it on ImageNet (RAIVNLab/STR ``models/mobilenetv1.py``): a
3x3 stride-2 conv to 32 channels, 13 depthwise-separable blocks (3x3 depthwise conv, BN, ReLU,
1x1 pointwise conv, BN, ReLU; no conv bias), average pooling and the classifier as a 1x1 conv
without bias. 4,209,088 conv weights (STR's README: 4.21 M) and 4,230,976 params with the BN
layers; 568,740,352 MACs at 224x224 (Howard et al. 2017: 4.2 M, 569 M mult-adds). The often
quoted 4,231,976 params count a classifier bias that STR's ``builder.conv1x1`` does not have
(``bias=False``).

Initialisation as STR's builder does it: every conv but the classifier keeps PyTorch's default
(``builder.conv2d`` does not re-initialise), the classifier (``builder.conv1x1``) is He normal in
fan-in mode (``configs/largescale/mobilenetv1-*.yaml``: ``init: kaiming_normal``,
``mode: fan_in``).

Deviation: STR pools with ``AvgPool2d(7)`` (the 7x7 map of a 224x224 input); global average
pooling is the same there and fits other input sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# (pointwise output width, depthwise stride) of the 13 depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
STEM_WIDTH = 32


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class MobileNetV1(nn.Module):
    """``channels`` = (stem, pw1, ..., pw13). A depthwise conv keeps its input's width, so each
    pointwise conv's output width (and the stem's) is an independent group: 14 groups."""

    def __init__(self, num_classes: int = 1000, input_shape=(3, 224, 224),
                 channels: Sequence[int] = (STEM_WIDTH, *(w for w, _ in BLOCKS))):
        super().__init__()
        stem, *widths = channels
        layers = _conv_bn(input_shape[0], stem, 3, 2)
        c_in = stem
        for width, (_, stride) in zip(widths, BLOCKS, strict=True):
            layers += _conv_bn(c_in, c_in, 3, stride, groups=c_in)
            layers += _conv_bn(c_in, width, 1, 1)
            c_in = width
        self.model = nn.Sequential(*layers)
        self.fc = nn.Conv2d(c_in, num_classes, 1, bias=False)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.adaptive_avg_pool2d(self.model(x), 1)
        return torch.flatten(self.fc(h), 1)
