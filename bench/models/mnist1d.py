"""The MNIST-1D reference models (greydanus/mnist1d ``notebooks/models.py``): ``ConvBase``
(5,210 params) and ``MLPBase`` (15,210 params), with a width multiplier on the hidden layers."""

from __future__ import annotations

import torch
from torch import nn


def _scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


class MNIST1DCNN(nn.Module):
    """Conv1d(1,25,5,s2,p1) -> Conv1d(25,25,3,s2,p1) x2 -> Linear(125,10), ReLU between."""

    def __init__(self, num_classes: int = 10, length: int = 40, width: float = 1.0):
        super().__init__()
        c = _scaled(25, width)
        self.conv1 = nn.Conv1d(1, c, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(c, c, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(c, c, 3, stride=2, padding=1)
        out_len = length
        for k in (5, 3, 3):
            out_len = (out_len + 2 - k) // 2 + 1
        self.linear = nn.Linear(c * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1) if x.dim() == 2 else x
        h = torch.relu(self.conv1(h))
        h = torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(h))
        return self.linear(h.flatten(1))


class MNIST1DMLP(nn.Module):
    """Linear(40,100) -> h + relu(Linear(100,100) h) -> Linear(100,10)."""

    def __init__(self, num_classes: int = 10, length: int = 40, width: float = 1.0):
        super().__init__()
        h = _scaled(100, width)
        self.linear1 = nn.Linear(length, h)
        self.linear2 = nn.Linear(h, h)
        self.linear3 = nn.Linear(h, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.linear1(x.flatten(1)))
        h = h + torch.relu(self.linear2(h))
        return self.linear3(h)
