"""A deep MLP with sigmoid activations: each layer shrinks the gradient about fourfold."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope

from . import Expect
from .common import classification, mlp

EXPECT = Expect("vanishing", frozenset({"0.weight", "2.weight"}))


def train(mistake: bool = True, steps: int = 8) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = classification()
    net = mlp(depth=10, act=nn.Sigmoid if mistake else nn.ReLU)
    if not mistake:  # the usual cure: ReLU with an initialisation made for it
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
