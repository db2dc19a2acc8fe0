"""A model file for ``gradscope graph``: any ``file.py:factory`` whose factory returns a module.

gradscope graph examples/mymodels.py:make_net --input 8,16 --input 8,16 -o net.svg
"""

from __future__ import annotations

import torch
from torch import nn


class TwoTower(nn.Module):
    """Two inputs, one encoder each, a shared head: the kind of model that takes ``--input``
    twice."""

    def __init__(self, features: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.right = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.left(x) * self.right(y))
        return out


def make_net() -> nn.Module:
    """The factory ``gradscope graph examples/mymodels.py:make_net`` calls."""
    return TwoTower()
