"""LeNet whose convolutional features are computed under torch.no_grad() "to save memory"."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect

EXPECT = Expect("no_gradient", frozenset({"conv1.weight", "conv2.weight"}), words=("no_grad",))


class Net(gradscope.LeNet):
    def __init__(self, mistake: bool) -> None:
        super().__init__()
        self.mistake = mistake

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return torch.flatten(F.max_pool2d(F.relu(self.conv2(x)), 2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mistake:
            with torch.no_grad():
                h = self.features(x)
        else:
            h = self.features(x)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(h)))))


def train(mistake: bool = True, steps: int = 6) -> gradscope.Watch:
    torch.manual_seed(0)
    net = Net(mistake)
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
