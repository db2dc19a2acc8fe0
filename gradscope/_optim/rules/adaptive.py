"""Reference rules for RMSprop, Adagrad and Adadelta, from their torch.optim docstrings."""

from __future__ import annotations

from typing import Any

from ..arrays import A, full_like, unit_roundoff, zeros_like
from .base import Update, array, flag, num, steps_taken

__all__ = ["adadelta", "adagrad", "rmsprop"]


def _decayed(param: A, grad: A, group: dict[str, Any]) -> A:
    """The gradient to step along: negated to maximize, plus L2 weight decay."""
    g = -grad if flag(group, "maximize") else grad
    weight_decay = num(group.get("weight_decay", 0))
    return g.add(param, alpha=weight_decay) if weight_decay != 0 else g


def _magnitude(param: A, grad: A, group: dict[str, Any]) -> A | None:
    """``|g| + wd |p|``: the scale of torch's rounding in ``g + wd * p``; None without decay."""
    weight_decay = num(group.get("weight_decay", 0))
    if weight_decay == 0:
        return None
    return grad.abs().add_(param.abs(), alpha=weight_decay)


def rmsprop(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.RMSprop: running mean of squares, centered variant, momentum, maximize.

    >>> import torch
    >>> rmsprop(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 0.1, "alpha": 0.75}).param
    tensor([0.8000])
    """
    lr, alpha = num(group["lr"]), num(group.get("alpha", 0.99))
    eps, momentum = num(group.get("eps", 1e-8)), num(group.get("momentum", 0))
    g = _decayed(param, grad, group)
    square_old: A | None = array(state, "square_avg")
    square = (zeros_like(g) if square_old is None else square_old).mul(alpha)
    square.addcmul_(g, g, value=1 - alpha)
    new_state: dict[str, A | float] = {"step": steps_taken(state) + 1, "square_avg": square}
    # How far torch's rounding may move g / denom, in units of eps (see tolerance.py).
    moves: list[A] = []
    if flag(group, "centered"):
        mean_old: A | None = array(state, "grad_avg")
        mean = (zeros_like(g) if mean_old is None else mean_old).lerp(g, 1 - alpha)
        new_state["grad_avg"] = mean
        root = square.addcmul(mean, mean, value=-1.0).sqrt_()
        denom = root + eps
        # square - mean^2 cancels: rounding of eps * square moves its root by eps * square /
        # root, and never by more than sqrt(eps * square / 2).
        floor = (square * (unit_roundoff(g) / 2)).sqrt_()
        shift = (square / root.maximum(floor)).nan_to_num_()
        moves.append((g / denom).abs_().div_(denom).mul_(shift))
    else:
        denom = square.sqrt().add_(eps)
    magnitude = _magnitude(param, grad, group)
    error: dict[str, A | float] = {}
    if magnitude is not None:
        error["square_avg"] = (magnitude * g).abs_().mul_(2 * (1 - alpha))
        if "grad_avg" in new_state:
            error["grad_avg"] = magnitude * (1 - alpha)
        moves.append(magnitude.div_(denom).mul_((g / denom).abs_().add_(1.0)))
    if momentum > 0:
        buffer_old: A | None = array(state, "momentum_buffer")
        buffer = (zeros_like(g) if buffer_old is None else buffer_old).mul(momentum)
        buffer.addcdiv_(g, denom)
        new_state["momentum_buffer"] = buffer
        new_param = param.add(buffer, alpha=-lr)
    else:
        new_param = param.addcdiv(g, denom, value=-lr)
    if moves:
        move = moves[0] if len(moves) == 1 else moves[0].add_(moves[1])
        if momentum > 0:
            error["momentum_buffer"] = move
        error["param"] = move * lr
    return Update(new_param, new_state, error)


def adagrad(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.Adagrad: accumulated squares, learning-rate decay, maximize.

    >>> import torch
    >>> adagrad(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 0.1}).param
    tensor([0.9000])
    """
    lr = num(group["lr"])
    t = steps_taken(state) + 1
    decayed_lr = lr / (1 + (t - 1) * num(group.get("lr_decay", 0)))
    eps = num(group.get("eps", 1e-10))
    g = _decayed(param, grad, group)
    total_old: A | None = array(state, "sum")
    if total_old is None:
        total_old = full_like(g, num(group.get("initial_accumulator_value", 0)))
    total = total_old.addcmul(g, g)
    denom = total.sqrt().add_(eps)
    new_param = param.addcdiv(g, denom, value=-decayed_lr)
    error: dict[str, A | float] = {}
    magnitude = _magnitude(param, grad, group)
    if magnitude is not None:
        step = (g / denom).abs_()
        error["sum"] = (magnitude * g).abs_().mul_(2.0)
        error["param"] = magnitude.div_(denom).mul_(step.add_(1.0).mul_(decayed_lr))
    return Update(new_param, {"step": t, "sum": total}, error)


def adadelta(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.Adadelta: the step is ``sqrt(u + eps) / sqrt(v + eps) * g``, scaled by lr.

    ``v`` (``square_avg``) averages ``g^2`` and ``u`` (``acc_delta``) the squared steps, both
    with weight ``rho``.

    >>> import torch
    >>> adadelta(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 1.0, "eps": 0.0}).param
    tensor([1.])
    """
    lr, rho, eps = (
        num(group.get("lr", 1.0)),
        num(group.get("rho", 0.9)),
        num(group.get("eps", 1e-6)),
    )
    g = _decayed(param, grad, group)
    square_old: A | None = array(state, "square_avg")
    square = (zeros_like(g) if square_old is None else square_old).mul(rho)
    square.addcmul_(g, g, value=1 - rho)
    accumulated_old: A | None = array(state, "acc_delta")
    if accumulated_old is None:
        accumulated_old = zeros_like(g)
    ratio = (accumulated_old + eps).sqrt_().div_((square + eps).sqrt_())
    delta = ratio * g
    accumulated = accumulated_old.mul(rho).addcmul_(delta, delta, value=1 - rho)
    new_state: dict[str, A | float] = {"step": steps_taken(state) + 1, "square_avg": square}
    new_state["acc_delta"] = accumulated
    error: dict[str, A | float] = {}
    magnitude = _magnitude(param, grad, group)
    if magnitude is not None:
        error["square_avg"] = (g * magnitude).abs_().mul_(2 * (1 - rho))
        # the step is linear in d up to the ratio, which moves by at most its own size
        moved = magnitude.mul_(ratio).mul_(2.0)
        error["acc_delta"] = (delta * moved).abs_().mul_(2 * (1 - rho))
        error["param"] = moved.mul_(lr)
    return Update(param.add(delta, alpha=-lr), new_state, error)
