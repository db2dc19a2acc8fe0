"""A regression MLP predicting a mean and a log-variance: log() of a raw linear output is NaN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradscope

from . import Expect
from .common import classification

EXPECT = Expect("nonfinite_forward", module="log_var", words=("torch.log",))


class LogVariance(nn.Module):
    def __init__(self, features: int, mistake: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.mistake = mistake

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mistake:
            return torch.log(self.linear(h))  # the mistake: the linear output can be <= 0
        return torch.log(F.softplus(self.linear(h)) + 1e-6)


class Regressor(nn.Module):
    def __init__(self, mistake: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 32), nn.ReLU())
        self.mean = nn.Linear(32, 1)
        self.log_var = LogVariance(32, mistake)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean(h).squeeze(1), self.log_var(h).squeeze(1)


def train(mistake: bool = True, steps: int = 8) -> gradscope.Watch:
    torch.manual_seed(0)
    x, labels = classification()
    target = labels.float()
    net = Regressor(mistake)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            mean, log_var = net(x)
            loss = (0.5 * (log_var + (target - mean) ** 2 / log_var.exp())).mean()  # Gaussian NLL
            loss.backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
