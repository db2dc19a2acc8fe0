"""An LSTM classifier trained with SGD at lr 1e-5, a thousand times too low."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope

from . import Expect
from .common import sequences

EXPECT = Expect("update_ratio", frozenset({"lstm.weight_ih_l0", "lstm.weight_hh_l0"}))


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def train(mistake: bool = True, steps: int = 10) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = sequences()
    net = Classifier()
    opt = torch.optim.SGD(net.parameters(), lr=1e-5 if mistake else 1e-2, momentum=0.9)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
