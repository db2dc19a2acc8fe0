"""LeNet trained with Adam at lr 0.1, a hundred times its usual 1e-3."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect

EXPECT = Expect("update_ratio", frozenset({"conv1.weight", "fc1.weight", "fc2.weight"}))


def train(mistake: bool = True, steps: int = 12) -> gradscope.Watch:
    torch.manual_seed(0)
    net = gradscope.LeNet()
    x, y = torch.randn(32, 1, 32, 32), torch.randint(0, 10, (32,))
    opt = torch.optim.Adam(net.parameters(), lr=0.1 if mistake else 1e-3)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
