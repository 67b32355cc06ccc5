"""The CIFAR VGG of GraSP and EigenDamage (alecwangcq/GraSP ``models/base/vgg.py``,
alecwangcq/EigenDamage-Pytorch ``models/vgg.py``, the same ``defaultcfg``): 3x3 convs without
bias, each followed by BN and ReLU, 2x2 max-pooling between stages, average pooling to 1x1 and a
single Linear(512, C). VGG-19: 20,035,018 params (C = 10), 20,081,188 (C = 100), 398,136,320
MACs on 32x32; VGG-16: 14,724,042 params (C = 10).

Initialisation: GraSP's ``weights_init`` (``bench.models.inits.grasp_init``). EigenDamage builds
the same layers but initialises with He fan-in normal for every conv and Linear; the registry's
``vgg19_grasp`` uses GraSP's.

Deviation: the reference pools with ``AvgPool2d(2)`` (CIFAR, 2x2 map) or ``AvgPool2d(4)``
(Tiny-ImageNet, 4x4 map); both reduce the last map to 1x1, which is what global average pooling
does on every input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bench.models.inits import grasp_init

# Convs per stage; stages are separated by 2x2 max-pooling (none after the last).
STAGE_DEPTHS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_STAGE_WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    """``channels`` = one width per stage (the reference cfg's 64-128-256-512-512). Nothing in
    VGG ties layer widths together; the registry groups the convs of a stage because the cfg
    gives them one width, and five groups keep the thin-dense search small."""

    def __init__(self, depth: int = 19, num_classes: int = 10, input_shape=(3, 32, 32),
                 channels: Sequence[int] = VGG_STAGE_WIDTHS):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for stage, (convs, width) in enumerate(zip(STAGE_DEPTHS[depth], channels, strict=True)):
            if stage:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(convs):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                c_in = width
        self.feature = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)
        self.apply(grasp_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.adaptive_avg_pool2d(self.feature(x), 1)
        return self.classifier(torch.flatten(h, 1))
