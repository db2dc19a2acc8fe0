"""Layer-wise learning-rate decay with a typo: decay 0 instead of 0.5 gives lower layers lr 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect
from .common import classification, mlp

EXPECT = Expect("not_updated", frozenset({"0.weight", "0.bias", "2.weight", "4.weight"}))


def train(mistake: bool = True, steps: int = 10) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = classification()
    net = mlp()
    decay = 0.0 if mistake else 0.5
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    groups = [
        {"params": layer.parameters(), "lr": 0.05 * decay ** (len(linears) - 1 - depth)}
        for depth, layer in enumerate(linears)
    ]
    opt = torch.optim.SGD(groups, lr=0.05)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
