"""A CNN that standardises each image itself: a blank image in the data has std 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope

from . import Expect
from .common import SmallCNN, images

EXPECT = Expect("nonfinite_forward", module="standardize", words=("div",))


class Standardize(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((1, 2, 3), keepdim=True)
        std = x.std((1, 2, 3), keepdim=True)
        return (x - mean) / (std + self.eps)  # eps 0 is the mistake


class Net(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.standardize = Standardize(eps)
        self.cnn = SmallCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(self.standardize(x))


def train(mistake: bool = True, steps: int = 6) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = images()
    x[5] = 0.5  # a blank image, as real datasets have
    net = Net(eps=0.0 if mistake else 1e-5)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
