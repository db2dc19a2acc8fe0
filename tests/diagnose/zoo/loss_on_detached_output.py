"""Two heads on one GRU encoder; the main loss is computed on a detached output by mistake
(copied from the accuracy computation), so only the auxiliary head trains the encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope

from . import Expect
from .common import sequences

EXPECT = Expect("no_gradient", frozenset({"head.weight", "head.bias"}), module="head")


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 32, batch_first=True)
        self.head = nn.Linear(32, 3)
        self.aux = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.gru(x)
        return self.head(out[:, -1]), self.aux(out).squeeze(-1)


def train(mistake: bool = True, steps: int = 8) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = sequences()
    net = TwoHeads()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            logits, next_value = net(x)
            if mistake:
                logits = logits.detach()  # meant for the accuracy, used for the loss
            loss = F.cross_entropy(logits, y) + 0.1 * F.mse_loss(next_value[:, :-1], x[:, 1:, 0])
            loss.backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
