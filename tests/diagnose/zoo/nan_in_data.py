"""An MLP trained on features read from a CSV with missing values (NaN) left in."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect
from .common import classification, mlp

EXPECT = Expect("nonfinite_input", module="")


def train(mistake: bool = True, steps: int = 6) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = classification()
    x[17, 3] = float("nan")  # a missing value
    if not mistake:
        x = torch.nan_to_num(x, nan=0.0)  # imputed
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
