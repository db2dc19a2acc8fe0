"""Step 6 of ``gradscope demo``: the tutorial's hand-written SGD update, checked.

The weights are updated by hand (``f.data.sub_(f.grad.data * learning_rate)``) inside
``check_step(manual=True)``, which matches every parameter against ``SGD(lr).step()``; then once
more with a typo for one parameter (``add_``), which the check names. The typo is undone, so
training starts from the correct step.
"""

from __future__ import annotations

import torch
from torch import nn, optim

from .._optim.check import check_step
from .narrator import Narrator

__all__ = ["manual_update"]


def manual_update(n: Narrator, net: nn.Module, lr: float) -> None:
    """The tutorial's hand-written SGD step, checked; then a wrong one, caught."""
    n.step(6, "Updating the weights by hand: weight = weight - learning_rate * gradient")
    n.raw(
        f"learning_rate = {lr}\n"
        f"optimizer = optim.SGD(net.parameters(), lr={lr})  # only to say what to expect\n"
        "with gradscope.check_step(optimizer, params=net, manual=True) as report:\n"
        "    for f in net.parameters():\n"
        "        f.data.sub_(f.grad.data * learning_rate)"
    )
    optimizer = optim.SGD(net.parameters(), lr=lr)
    saved = {name: p.detach().clone() for name, p in net.named_parameters()}
    with check_step(optimizer, params=net, manual=True) as report:
        for f in net.parameters():
            f.data.sub_(f.grad.data * lr)  # type: ignore[union-attr]
    n.say(report.headline(), 2)
    n.say(
        f"check_step computed what SGD(lr={lr}).step() would do before the block and compared "
        f"the result with it: all {len(report.params)} parameters match.",
        2,
    )
    n.say()
    n.say("A deliberately wrong update, a typo for one parameter (add_ instead of sub_):", 2)
    n.raw(
        "with gradscope.check_step(optimizer, params=net, manual=True) as report:\n"
        "    for name, f in net.named_parameters():\n"
        "        if name == 'fc1.weight':\n"
        "            f.data.add_(f.grad.data * learning_rate)   # the typo\n"
        "        else:\n"
        "            f.data.sub_(f.grad.data * learning_rate)"
    )
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(saved[name])
    with check_step(optimizer, params=net, manual=True) as report:
        for name, f in net.named_parameters():
            if name == "fc1.weight":
                f.data.add_(f.grad.data * lr)  # type: ignore[union-attr]
            else:
                f.data.sub_(f.grad.data * lr)  # type: ignore[union-attr]
    n.say(report.headline(), 2)
    for failure in report.failures:
        off = "" if failure.max_rel_diff is None else f", off by {failure.max_rel_diff:.2f} steps"
        n.say(f"{failure.name}{off}: {'; '.join(failure.reasons)}", 4)
    with torch.no_grad():  # undo the wrong step so training starts from the right one
        for name, p in net.named_parameters():
            p.copy_(saved[name] - lr * p.grad)  # type: ignore[operator]
    n.say("(The typo is undone before training: every parameter gets the correct step.)", 2)
