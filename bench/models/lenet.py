"""LeNet-300-100 (266,610 params) and LeNet-5 in its Caffe variant (431,080 params; the one
Han et al. 2015 and TimDettmers/sparse_learning ``LeNet_5_Caffe`` use, not the classic 61K one),
built at explicit hidden channel counts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class LeNet300100(nn.Module):
    """``channels`` = (fc1, fc2) output widths."""

    def __init__(self, num_classes: int = 10, input_shape=(1, 28, 28),
                 channels: Sequence[int] = (300, 100)):
        super().__init__()
        h1, h2 = channels
        self.fc1 = nn.Linear(math.prod(input_shape), h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x.flatten(1)))
        h = torch.relu(self.fc2(h))
        return self.fc3(h)


class LeNet5Caffe(nn.Module):
    """conv20-5x5 -> maxpool2 -> conv50-5x5 -> maxpool2 -> fc500 -> fc10, no padding.

    ``channels`` = (conv1, conv2, fc3) output widths."""

    def __init__(self, num_classes: int = 10, input_shape=(1, 28, 28),
                 channels: Sequence[int] = (20, 50, 500)):
        super().__init__()
        c1, c2, f = channels
        in_channels, height, _ = input_shape
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        side = ((height - 4) // 2 - 4) // 2
        self.fc3 = nn.Linear(c2 * side * side, f)
        self.fc4 = nn.Linear(f, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
        h = torch.relu(self.fc3(h.flatten(1)))
        return self.fc4(h)
