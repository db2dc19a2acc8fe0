"""Check the tutorial's optimizer step against a reference: one passing check, two failing.

The tutorial trains its LeNet with ``optim.SGD(net.parameters(), lr=0.01)`` and MSELoss against
a random target. The first check passes; the second leaves fc3 out of the optimizer by mistake,
and gradscope names both of its parameters; the third is a hand-written momentum SGD that
never stores its momentum buffer, which verify_optimizer catches at the first step that reads
it back, naming the state entry. Run: ``python examples/optimizer_check.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn, optim

import gradscope


class ForgetfulMomentumSGD(optim.SGD):
    """A hand-written momentum SGD with a classic bug: the new buffer is never stored."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "momentum_buffer" not in state:  # the first step: the buffer is the gradient
                    state["momentum_buffer"] = buf = p.grad.clone()
                else:
                    buf = group["momentum"] * state["momentum_buffer"] + p.grad  # never stored
                p.add_(buf, alpha=-group["lr"])


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

    print("\n3. a hand-written momentum SGD that never stores its buffer, every step verified:")
    opt = ForgetfulMomentumSGD(net.parameters(), lr=0.01, momentum=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gradscope.GradscopeWarning)
        with gradscope.verify_optimizer(opt, params=net) as verifier:
            for _ in range(3):
                opt.zero_grad()
                nn.MSELoss()(net(x), target).backward()
                opt.step()
    print(f"{verifier!r}; the first failing step:\n{caught[0].message}")


if __name__ == "__main__":
    main()
