"""A TransformerEncoder classifier whose optimizer was built before the head was attached."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

import gradscope

from . import Expect
from .common import TinyTransformer, tokens

EXPECT = Expect("not_in_optimizer", frozenset({"head.weight", "head.bias"}), module="head")


def train(mistake: bool = True, steps: int = 8) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = tokens()
    net = TinyTransformer()
    if mistake:  # only the "backbone" made it into the optimizer
        params = itertools.chain(net.embed.parameters(), net.encoder.parameters())
    else:
        params = net.parameters()
    opt = torch.optim.AdamW(params, lr=1e-3)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
