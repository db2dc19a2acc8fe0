"""An LSTM tagger with a projection branch whose result forward() forgets to add."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope

from . import Expect
from .common import sequences

EXPECT = Expect("no_gradient", frozenset({"skip.weight", "skip.bias"}), module="skip")


class Tagger(nn.Module):
    def __init__(self, mistake: bool) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=True)
        self.skip = nn.Linear(8, 32)
        self.head = nn.Linear(32, 3)
        self.mistake = mistake

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        skip = self.skip(x)
        h = out if self.mistake else out + skip  # the mistake: the skip branch is dropped
        return self.head(h[:, -1])


def train(mistake: bool = True, steps: int = 8) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = sequences()
    net = Tagger(mistake)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
