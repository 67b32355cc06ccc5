"""LeNet-300-100 (266,610 params) and LeNet-5 in its Caffe variant (431,080 params; the one
Han et al. 2015 and TimDettmers/sparse_learning ``LeNet_5_Caffe`` use, not the classic 61K one)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bench.models.mnist1d import _scaled


class LeNet300100(nn.Module):
    def __init__(self, num_classes: int = 10, input_shape=(1, 28, 28), width: float = 1.0):
        super().__init__()
        h1, h2 = _scaled(300, width), _scaled(100, width)
        self.fc1 = nn.Linear(math.prod(input_shape), h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x.flatten(1)))
        h = torch.relu(self.fc2(h))
        return self.fc3(h)


class LeNet5Caffe(nn.Module):
    """conv20-5x5 -> maxpool2 -> conv50-5x5 -> maxpool2 -> fc500 -> fc10, no padding."""

    def __init__(self, num_classes: int = 10, input_shape=(1, 28, 28), width: float = 1.0):
        super().__init__()
        c1, c2, f = _scaled(20, width), _scaled(50, width), _scaled(500, width)
        channels, height, _ = input_shape
        self.conv1 = nn.Conv2d(channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        side = ((height - 4) // 2 - 4) // 2
        self.fc3 = nn.Linear(c2 * side * side, f)
        self.fc4 = nn.Linear(f, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
        h = torch.relu(self.fc3(h.flatten(1)))
        return self.fc4(h)
