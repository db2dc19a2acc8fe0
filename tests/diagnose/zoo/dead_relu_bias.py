"""An MLP whose first layer's biases were initialised to -3: almost every ReLU is off for good."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect
from .common import classification, mlp

EXPECT = Expect("dead_units", frozenset({"0.bias"}), module="0")


def train(mistake: bool = True, steps: int = 16) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = classification()
    net = mlp(hidden=128)
    if mistake:
        torch.nn.init.constant_(net[0].bias, -3.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    with gradscope.watch(net, optimizer=opt) as w:
        for i in range(steps):
            batch = slice(64 * (i % 4), 64 * (i % 4 + 1))
            opt.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
