"""Reference rules for torch.optim.SGD, ASGD and Rprop, from their documented update rules."""

from __future__ import annotations

from typing import Any

from ..arrays import A, full_like, zeros_like
from .base import Update, array, flag, num, pair, steps_taken

__all__ = ["asgd", "rprop", "sgd"]


def sgd(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.SGD: weight decay, momentum with dampening, Nesterov, maximize.

    The buffer starts as the gradient itself on the first step with momentum.

    >>> import torch
    >>> sgd(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 0.5}).param
    tensor([0.])
    """
    lr, momentum = num(group["lr"]), num(group.get("momentum", 0))
    weight_decay = num(group.get("weight_decay", 0))
    g = -grad if flag(group, "maximize") else grad
    if weight_decay != 0:
        g = g.add(param, alpha=weight_decay)
    new_state: dict[str, A | float] = {}
    if momentum != 0:
        previous: A | None = array(state, "momentum_buffer")
        dampening = num(group.get("dampening", 0))
        if previous is None:
            buffer = g.clone()
        else:  # in torch's order, so a correct step matches bit for bit (a cheaper comparison)
            buffer = previous.mul(momentum).add_(g, alpha=1 - dampening)
        new_state["momentum_buffer"] = buffer
        g = g.add(buffer, alpha=momentum) if flag(group, "nesterov") else buffer
    return Update(param.add(g, alpha=-lr), new_state, change=(-lr, g))


def asgd(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.ASGD: SGD with a decaying step size ``eta`` and a running average ``ax``.

    The step uses ``eta`` from the state (``lr`` at first), then the average ``ax`` follows the
    new parameter with weight ``mu`` (a plain copy while ``mu`` is 1), then both are advanced:
    ``eta = lr / (1 + lambd * lr * t) ** alpha`` and ``mu = 1 / max(1, t - t0)``.

    >>> import torch
    >>> asgd(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 0.5, "lambd": 0.0}).param
    tensor([0.])
    """
    lr, lambd = num(group["lr"]), num(group.get("lambd", 1e-4))
    alpha, t0 = num(group.get("alpha", 0.75)), num(group.get("t0", 1e6))
    weight_decay = num(group.get("weight_decay", 0))
    t = steps_taken(state) + 1
    eta = num(state.get("eta", lr))
    g = -grad if flag(group, "maximize") else grad
    if weight_decay != 0:
        g = g.add(param, alpha=weight_decay)
    new_param = param.mul(1 - lambd * eta).add_(g, alpha=-eta)
    average: A | None = array(state, "ax")
    # torch starts ax and mu together on the first step, and copies the parameter while mu is 1
    if average is None or (mu := num(state["mu"])) == 1:
        new_average = new_param.clone()
    else:
        new_average = average.add(new_param.add(average, alpha=-1.0), alpha=mu)
    new_state: dict[str, A | float] = {
        "step": t,
        "eta": lr / (1 + lambd * lr * t) ** alpha,
        "mu": 1 / max(1.0, t - t0),
        "ax": new_average,
    }
    return Update(new_param, new_state)


def rprop(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.Rprop: per-element step sizes grown or shrunk by the sign of ``g * g_prev``.

    Where the sign flipped the step size shrinks and the gradient counts as 0 (no move, and 0
    is remembered as the previous gradient). The step sizes start at ``lr``; torch clamps them
    to ``step_sizes`` on every step, also where the sign product is 0.

    >>> import torch
    >>> rprop(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 0.1}).param
    tensor([0.9000])
    """
    lr = num(group["lr"])
    eta_minus, eta_plus = pair(group, "etas", (0.5, 1.2))
    smallest, largest = pair(group, "step_sizes", (1e-6, 50.0))
    g = -grad if flag(group, "maximize") else grad
    previous: A | None = array(state, "prev")
    if previous is None:
        previous = zeros_like(g)
    sizes: A | None = array(state, "step_size")
    if sizes is None:
        sizes = full_like(g, lr)
    agreement = g.mul(previous)
    grew, flipped = agreement.gt(0), agreement.lt(0)
    factor = full_like(g, 1.0).masked_fill(grew, eta_plus).masked_fill(flipped, eta_minus)
    new_sizes = sizes.mul(factor).clamp(smallest, largest)
    g = g.masked_fill(flipped, 0.0)
    new_param = param.addcmul(g.sign(), new_sizes, value=-1.0)
    return Update(new_param, {"step": steps_taken(state) + 1, "prev": g, "step_size": new_sizes})
