"""Mixed precision (float16 autocast, GradScaler) with a summed loss that overflows float16."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect
from .common import classification, mlp

EXPECT = Expect("loss_scale_collapse")


def train(mistake: bool = True, steps: int = 16) -> gradscope.Watch:
    torch.manual_seed(0)
    x, labels = classification(n=256)
    target = F.one_hot(labels, 5).float() * 300.0  # unnormalised regression targets
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    with gradscope.watch(net, optimizer=opt, scaler=scaler) as w:
        for _ in range(steps):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                out = net(x)
            if mistake:  # a sum over the batch, in float16: far beyond its 65504
                loss = ((out - target.half()) ** 2).sum()
            else:
                loss = F.mse_loss(out.float(), target / 300.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return w


if __name__ == "__main__":
    print(train().diagnose())
