"""A Siamese MLP whose distance is sqrt(sum of squares): identical pairs make sqrt'(0) = inf."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope

from . import Expect
from .common import mlp

EXPECT = Expect("nonfinite_backward", module="distance", words=("SqrtBackward0",))


class Distance(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(((u - v) ** 2).sum(-1) + self.eps)  # eps 0 is the mistake


class Siamese(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.encoder = mlp(20, 32, 8, depth=2)
        self.distance = Distance(eps)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.encoder(a), self.encoder(b))


def train(mistake: bool = True, steps: int = 8) -> gradscope.Watch:
    torch.manual_seed(0)
    a = torch.randn(32, 20)
    b = torch.where(torch.arange(32).unsqueeze(1) < 8, a, torch.randn(32, 20))  # 8 same pairs
    same = (torch.arange(32) < 8).float()
    net = Siamese(eps=0.0 if mistake else 1e-8)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            d = net(a, b)
            loss = (same * d**2 + (1 - same) * F.relu(2.0 - d) ** 2).mean()  # contrastive
            loss.backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
