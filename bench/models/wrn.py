"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016): pre-activation basic blocks, a 1x1 conv
shortcut on the first block of each stage, final BN-ReLU, global average pooling, one Linear.

Architecture and initialisation follow the DSR code (IntelAI/dynamic-reparameterization
``model.py``: ``cifar10_WideResNet``, ``BasicBlock``, ``reset_parameters``):
- a block whose input and output widths differ applies BN-ReLU to its input once and feeds the
  activated tensor to both the residual branch and the 1x1 shortcut conv; a block with equal
  widths adds its raw input;
- the stem is a 3x3 conv to 16 channels, not widened; stage s has 16 * 2^s * k channels;
- conv weights ~ N(0, 2 / (k_h k_w c_out)), BN weight 1 / bias 0, Linear bias 0 (its weight
  keeps PyTorch's default).

WRN-28-2 (DSR, 1,467,610 params, 214,353,152 MACs on CIFAR-10) and WRN-22-2 (RigL's CIFAR model,
google-research/rigl ``rigl/cifar_resnet/resnet_model.py``, 1,079,642 params; RigL trains it with
dropout 0.3 between the two convs of a block, which this module applies when asked).

Width groups are the three stages; the stem stays at 16 channels at every width, as in WRN-d-k
for every k and in DSR's thin-dense runs (``experiments/wrnet_experiments.yaml``: the same model
at ``--widen-factor`` 0.75 ... 1.47, which scales the stages only).

Deviation: which block has a shortcut conv is fixed by the block's position (the first block of
each stage), not by comparing the built widths as DSR's ``equalInOut`` does. At the registered
widths both rules agree (every stage's first block changes width); they differ only where stage
1 is built at exactly 16 channels (DSR's widen factor 0.98 drops that block's 16x16 shortcut
conv, 256 weights). Fixing it keeps the architecture, and the parameter count thin dense solves
as a polynomial of the widths, the same at every channel count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, projection: bool, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        h = torch.relu(self.bn2(self.conv1(a)))
        if self.dropout > 0:
            h = nn.functional.dropout(h, p=self.dropout, training=self.training)
        h = self.conv2(h)
        # DSR: the shortcut conv sees the activated input, the identity the raw one.
        return h + (self.shortcut(a) if self.shortcut is not None else x)


STEM_WIDTH = 16


class WideResNet(nn.Module):
    """``channels`` = (stage1, stage2, stage3) widths; WRN-d-k has (16k, 32k, 64k) after a
    16-channel stem. Identity shortcuts tie every block of a stage to the stage's width; the
    shortcut conv of a stage's first block decouples it from the previous stage (and stage 1
    from the stem)."""

    def __init__(self, depth: int = 28, num_classes: int = 10, input_shape=(3, 32, 32),
                 channels: Sequence[int] = (32, 64, 128), dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("Wide ResNet depth must be 6n + 4")
        n = (depth - 4) // 6
        stem, stages = STEM_WIDTH, tuple(channels)
        self.conv1 = nn.Conv2d(input_shape[0], stem, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        c_in = stem
        for s, c_out in enumerate(stages):
            for i in range(n):
                stride = 2 if (s > 0 and i == 0) else 1
                blocks.append(PreActBlock(c_in, c_out, stride, i == 0, dropout))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv1(x))
        h = torch.relu(self.bn(h))
        # DSR pools with avg_pool2d(8) on the 8x8 map; global pooling is the same there and
        # also fits other input sizes.
        h = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)
        return self.fc(h)
