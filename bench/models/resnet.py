"""A small CIFAR-shaped ResNet (He et al. 2016, §4.2: 3 stages of n basic blocks, widths
16-32-64, 1x1-conv + BN projection shortcuts where the shape changes) and torchvision's
ResNet-50 (v1.5, stride on the 3x3 conv) for ImageNet, both built at explicit per-stage widths;
``torchvision_resnet`` builds any torchvision ResNet (block type, blocks per stage) that way.

GraSP's and EigenDamage's ResNet-32 (alecwangcq/GraSP ``models/base/resnet.py``,
alecwangcq/EigenDamage-Pytorch ``models/resnet.py``) are ``CifarResNet(32)`` at widths 32-64-128
and 64-128-256: the same blocks, stem and shortcuts (their ``downsample`` conv + ``bn3`` is the
projection here), with their papers' initialisation applied after construction
(``bench.models.inits``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

RESNET50_PLANES = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + self.shortcut(x))


class CifarResNet(nn.Module):
    """``channels`` = one width per stage. Inside a stage the identity shortcuts add every
    block's output to its input, so a stage has one width; the stem feeds stage 1's first block
    through an identity shortcut, so it has stage 1's width."""

    def __init__(self, depth: int = 8, num_classes: int = 10, input_shape=(3, 32, 32),
                 channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n + 2")
        n = (depth - 2) // 6
        widths = list(channels)
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for stage, c_out in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.blocks(h)
        h = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)
        return self.fc(h)


def resnet50(num_classes: int = 1000, input_shape=(3, 224, 224),
             channels: Sequence[int] = RESNET50_PLANES) -> nn.Module:
    """torchvision's ResNet-50 v1.5 at explicit per-stage widths. ``channels`` = the four
    stages' planes (bottleneck inner width; the block output is 4x that); the stem has stage
    1's planes, as DSR's thin dense scales it (``inplanes = round(64 k)``). torchvision's own
    ``width_per_group`` scales only the bottleneck's inner width, so the stages are built here;
    at the default planes and 3 input channels the model, its initialisation included, is
    torchvision's ``resnet50()`` (tested), and every width gets the same init scheme."""
    # Imported here: torchvision is slow to import and only the ResNet-50s need it.
    from torchvision.models.resnet import Bottleneck

    return torchvision_resnet(Bottleneck, (3, 4, 6, 3), num_classes, input_shape, channels)


def torchvision_resnet(block: type, layers: Sequence[int], num_classes: int,
                       input_shape: Sequence[int], channels: Sequence[int],
                       width_per_group: int = 64) -> nn.Module:
    """torchvision's ``ResNet(block, layers)`` with the four stages at ``channels`` planes and
    the stem at stage 1's planes (see ``resnet50``); at planes 64-128-256-512 and 3 input
    channels it is torchvision's model, initialisation included (same draws, same order)."""
    from torchvision.models.resnet import ResNet

    planes = tuple(channels)

    class ThinResNet(ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            # What torchvision's ResNet.__init__ sets up, in its order (the order of RNG draws).
            self._norm_layer = nn.BatchNorm2d
            self.inplanes = planes[0]
            self.dilation = 1
            self.groups = 1
            self.base_width = width_per_group
            self.conv1 = nn.Conv2d(input_shape[0], self.inplanes, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(self.inplanes)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, planes[0], layers[0])
            self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
            self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
            self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
            # torchvision's initialisation (He et al. fan-out for convolutions, BN 1/0), so
            # thin and full-width models start from the same scheme.
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    return ThinResNet()
