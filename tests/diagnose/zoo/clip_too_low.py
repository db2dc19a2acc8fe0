"""A TransformerEncoder classifier clipped at max_norm=1e-3: every step is cut a thousandfold."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect
from .common import TinyTransformer, tokens

EXPECT = Expect("clipping_always", frozenset({"head.weight", "embed.weight"}))


def train(mistake: bool = True, steps: int = 10) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = tokens()
    net = TinyTransformer()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1e-3 if mistake else 1.0)
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
