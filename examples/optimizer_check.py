"""Check the tutorial's optimizer step against a reference: one passing check, one failing.

The tutorial trains its LeNet with ``optim.SGD(net.parameters(), lr=0.01)`` and MSELoss against
a random target. The first check passes; the second leaves fc3 out of the optimizer by mistake,
and gradscope names both of its parameters. Run: ``python examples/optimizer_check.py``.
"""

from __future__ import annotations

import torch
from torch import nn, optim

import gradscope


def train_step(net: nn.Module, opt: optim.Optimizer, x: torch.Tensor, target: torch.Tensor) -> None:
    """The tutorial's training step, with the optimizer step checked."""
    opt.zero_grad()
    loss = nn.MSELoss()(net(x), target)
    loss.backward()
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    report.raise_if_failed()
    print(report)


def main() -> None:
    torch.manual_seed(0)
    net = gradscope.LeNet()
    x, target = torch.randn(1, 1, 32, 32), torch.randn(10).view(1, -1)

    print("1. optim.SGD(net.parameters(), lr=0.01), as in the tutorial:")
    train_step(net, optim.SGD(net.parameters(), lr=0.01), x, target)

    print("\n2. the same, but fc3 was left out of the optimizer:")
    body = [p for name, p in net.named_parameters() if not name.startswith("fc3")]
    try:
        train_step(net, optim.SGD(body, lr=0.01), x, target)
    except gradscope.StepMismatch as err:
        print(f"caught StepMismatch:\n{err}")
    else:
        raise SystemExit("the missing fc3 parameters were not reported")


if __name__ == "__main__":
    main()
