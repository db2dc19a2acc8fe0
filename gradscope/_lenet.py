"""The LeNet of PyTorch's 60-minute tutorial, the network every gradscope example uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LeNet"]


class LeNet(nn.Module):
    """conv 1->6 5x5, conv 6->16 5x5, fc 400->120->84->10, for inputs of shape (N, 1, 32, 32).

    >>> out = LeNet()(torch.randn(1, 1, 32, 32))
    >>> tuple(out.shape)
    (1, 10)
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: a batch of 1x32x32 images; returns 10 scores per image."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out
