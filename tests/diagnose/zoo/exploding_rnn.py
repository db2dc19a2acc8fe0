"""A deep ReLU RNN (identity-initialised, like IRNN) on long sequences, trained without clipping."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope

from . import Expect
from .common import sequences

EXPECT = Expect("exploding", frozenset({"rnn.weight_hh_l0", "rnn.weight_hh_l1"}), module="rnn")


class Classifier(nn.Module):
    def __init__(self, gain: float) -> None:
        super().__init__()
        self.rnn = nn.RNN(8, 32, num_layers=2, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(32, 3)
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight_hh"):
                    p.copy_(torch.eye(32) * gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def train(mistake: bool = True, steps: int = 8) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = sequences(length=60)
    # The mistake: an identity recurrence with no clipping; the cure: a contracting one, clipped.
    net = Classifier(gain=1.0 if mistake else 0.5)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3 if mistake else 1e-2)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            if not mistake:
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
