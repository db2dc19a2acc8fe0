"""Fine-tuning LeNet: meant to freeze the conv layers, froze the classifier (wrong prefix)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gradscope

from . import Expect

EXPECT = Expect("frozen", frozenset({"fc1.weight", "fc2.weight", "fc3.weight", "fc3.bias"}))


def train(mistake: bool = True, steps: int = 10) -> gradscope.Watch:
    torch.manual_seed(0)
    net = gradscope.LeNet()
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    prefix = "fc" if mistake else "conv"  # the mistake: "fc" where "conv" was meant
    for name, p in net.named_parameters():
        if name.startswith(prefix):
            p.requires_grad_(False)
    # The usual recipe (optimizer over every parameter) hides it; the correct one filters.
    params = net.parameters() if mistake else [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return w


if __name__ == "__main__":
    print(train().diagnose())
