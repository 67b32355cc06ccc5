"""The MNIST-1D reference models (greydanus/mnist1d ``notebooks/models.py``): ``ConvBase``
(5,210 params) and ``MLPBase`` (15,210 params), built at explicit hidden channel counts (the
registry in ``bench.models`` maps a width multiplier to them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MNIST1DCNN(nn.Module):
    """Conv1d(1,25,5,s2,p1) -> Conv1d(25,25,3,s2,p1) x2 -> Linear(125,10), ReLU between.

    ``channels`` = the three convs' output channels; no residual ties them, so each may differ.
    """

    def __init__(self, num_classes: int = 10, length: int = 40,
                 channels: Sequence[int] = (25, 25, 25)):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv1d(1, c1, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(c1, c2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(c2, c3, 3, stride=2, padding=1)
        out_len = length
        for k in (5, 3, 3):
            out_len = (out_len + 2 - k) // 2 + 1
        self.linear = nn.Linear(c3 * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1) if x.dim() == 2 else x
        h = torch.relu(self.conv1(h))
        h = torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(h))
        return self.linear(h.flatten(1))


class MNIST1DMLP(nn.Module):
    """Linear(40,100) -> h + relu(Linear(100,100) h) -> Linear(100,10).

    One hidden width: the residual ``h + relu(linear2(h))`` ties linear1's and linear2's outputs.
    """

    def __init__(self, num_classes: int = 10, length: int = 40, hidden: int = 100):
        super().__init__()
        self.linear1 = nn.Linear(length, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.linear1(x.flatten(1)))
        h = h + torch.relu(self.linear2(h))
        return self.linear3(h)
