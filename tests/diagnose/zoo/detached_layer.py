"""A CNN whose features are detached by mistake (copied from code that froze a backbone)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect
from .common import SmallCNN, images

EXPECT = Expect(
    "no_gradient",
    frozenset({"features.0.weight", "features.1.weight", "features.3.weight"}),
    module="features",
    words=("detach",),
)


class Net(SmallCNN):
    def __init__(self, mistake: bool) -> None:
        super().__init__()
        self.mistake = mistake

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.mistake:
            h = h.detach()  # the mistake: nothing before this point learns
        return self.head(h)


def train(mistake: bool = True, steps: int = 12) -> gradscope.Watch:
    torch.manual_seed(0)
    x, y = images()
    net = Net(mistake)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
