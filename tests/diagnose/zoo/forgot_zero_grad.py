"""An MLP classifier whose loop never calls zero_grad(): each step applies all gradients so far."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect
from .common import classification, mlp

EXPECT = Expect("grads_accumulating", frozenset({"0.weight", "6.weight"}))


def train(mistake: bool = True, steps: int = 12) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = classification()
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with gradscope.watch(net, optimizer=opt) as w:
        for i in range(steps):
            batch = slice(32 * (i % 8), 32 * (i % 8 + 1))
            if not mistake:
                opt.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
