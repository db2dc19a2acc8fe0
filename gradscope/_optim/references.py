"""Reference update rules: what one optimizer step should do to one parameter.

Each rule is written from the update rule documented for its torch.optim class, as plain tensor
arithmetic (never by calling torch.optim), and has the signature that ``reference=`` takes::

    rule(param, grad, state, group) -> expected new value of param

``param`` and ``grad`` are copies taken just before the step, ``state`` is a copy of the
optimizer's own state for that parameter before the step (momentum buffers, ``exp_avg``, the step
count; empty before the first step) and ``group`` is its param group's hyperparameters. A rule
returns the new value and changes nothing. Plain SGD's rule is the tutorial's ``p - lr * grad``.

>>> p, g = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.5])
>>> sgd(p, g, {}, {"lr": 0.1})
tensor([0.9500, 2.0500])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["Reference", "adagrad", "adam", "adamw", "builtin_reference", "rmsprop", "sgd"]

Reference = Callable[[Tensor, Tensor, dict[str, Any], dict[str, Any]], Tensor]


def _num(value: Any) -> float:
    """A hyperparameter as a Python float (torch allows tensors for lr and betas)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _steps_taken(state: Mapping[str, Any]) -> float:
    return _num(state.get("step", 0))


def _direction(grad: Tensor, group: Mapping[str, Any]) -> Tensor:
    """The gradient to descend: negated when the group maximizes."""
    return -grad if group.get("maximize", False) else grad


def _coupled_decay(g: Tensor, param: Tensor, group: Mapping[str, Any]) -> Tensor:
    """L2 weight decay added to the gradient: g + weight_decay * param."""
    weight_decay = _num(group.get("weight_decay", 0))
    return g + weight_decay * param if weight_decay != 0 else g


def sgd(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
    """torch.optim.SGD: weight decay, momentum with dampening, Nesterov, maximize.

    >>> sgd(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 0.5})
    tensor([0.])
    """
    lr = _num(group["lr"])
    momentum = _num(group.get("momentum", 0))
    g = _coupled_decay(_direction(grad, group), param, group)
    if momentum != 0:
        previous = state.get("momentum_buffer")
        if previous is None:  # first step with momentum: the buffer starts as the gradient
            buffer = g
        else:
            buffer = momentum * previous + (1 - _num(group.get("dampening", 0))) * g
        g = g + momentum * buffer if group.get("nesterov", False) else buffer
    return param - lr * g


def adam(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
    """torch.optim.Adam: bias-corrected moments, amsgrad, L2 or decoupled weight decay, maximize.

    >>> adam(torch.tensor([1.0]), torch.tensor([3.0]), {}, {"lr": 0.1})  # first step: lr * sign
    tensor([0.9000])
    """
    decoupled = bool(group.get("decoupled_weight_decay", False))
    return _adam_rule(param, grad, state, group, decoupled=decoupled)


def adamw(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
    """torch.optim.AdamW: Adam with the weight decay applied to the parameter, not the gradient.

    >>> adamw(torch.tensor([1.0]), torch.tensor([3.0]), {}, {"lr": 0.1, "weight_decay": 0.5})
    tensor([0.8500])
    """
    return _adam_rule(param, grad, state, group, decoupled=True)


def _adam_rule(
    param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any], *, decoupled: bool
) -> Tensor:
    lr = _num(group["lr"])
    beta1, beta2 = (_num(b) for b in group.get("betas", (0.9, 0.999)))
    eps = _num(group.get("eps", 1e-8))
    weight_decay = _num(group.get("weight_decay", 0))
    t = _steps_taken(state) + 1
    g = _direction(grad, group)
    if weight_decay != 0:
        if decoupled:
            param = param * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    zeros = torch.zeros_like(param)
    m: Tensor = beta1 * state.get("exp_avg", zeros) + (1 - beta1) * g
    v: Tensor = beta2 * state.get("exp_avg_sq", zeros) + (1 - beta2) * g * g
    if group.get("amsgrad", False):
        v = torch.maximum(state.get("max_exp_avg_sq", zeros), v)
    bias1: float = 1 - beta1**t
    bias2: float = 1 - beta2**t
    m_hat, v_hat = m / bias1, v / bias2
    return param - lr * m_hat / (v_hat.sqrt() + eps)


def rmsprop(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
    """torch.optim.RMSprop: running mean of squares, centered variant, momentum, maximize.

    >>> rmsprop(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 0.1, "alpha": 0.75})
    tensor([0.8000])
    """
    lr = _num(group["lr"])
    alpha = _num(group.get("alpha", 0.99))
    eps = _num(group.get("eps", 1e-8))
    momentum = _num(group.get("momentum", 0))
    g = _coupled_decay(_direction(grad, group), param, group)
    zeros = torch.zeros_like(param)
    square_avg: Tensor = alpha * state.get("square_avg", zeros) + (1 - alpha) * g * g
    if group.get("centered", False):
        grad_avg: Tensor = alpha * state.get("grad_avg", zeros) + (1 - alpha) * g
        denom = (square_avg - grad_avg * grad_avg).sqrt() + eps
    else:
        denom = square_avg.sqrt() + eps
    if momentum > 0:
        buffer: Tensor = momentum * state.get("momentum_buffer", zeros) + g / denom
        return param - lr * buffer
    return param - lr * g / denom


def adagrad(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
    """torch.optim.Adagrad: accumulated squares, learning-rate decay, maximize.

    >>> adagrad(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 0.1})
    tensor([0.9000])
    """
    lr = _num(group["lr"])
    t = _steps_taken(state) + 1
    decayed_lr = lr / (1 + (t - 1) * _num(group.get("lr_decay", 0)))
    eps = _num(group.get("eps", 1e-10))
    g = _coupled_decay(_direction(grad, group), param, group)
    initial = torch.full_like(param, _num(group.get("initial_accumulator_value", 0)))
    accumulated: Tensor = state.get("sum", initial) + g * g
    return param - decayed_lr * g / (accumulated.sqrt() + eps)


# Looked up along the optimizer's MRO, so a subclass of AdamW (itself an Adam) takes the AdamW rule.
_BUILTIN: tuple[tuple[type[torch.optim.Optimizer], Reference], ...] = (
    (torch.optim.AdamW, adamw),
    (torch.optim.Adam, adam),
    (torch.optim.SGD, sgd),
    (torch.optim.RMSprop, rmsprop),
    (torch.optim.Adagrad, adagrad),
)


def builtin_reference(optimizer: torch.optim.Optimizer) -> tuple[str, Reference] | None:
    """The rule for ``optimizer``'s class or its nearest torch.optim base, with a description.

    >>> builtin_reference(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))[0]
    'the documented torch.optim.SGD update rule'
    """
    for base in type(optimizer).__mro__:
        for cls, rule in _BUILTIN:
            if base is cls:
                text = f"the documented torch.optim.{cls.__name__} update rule"
                if type(optimizer) is not cls:
                    text += f" ({type(optimizer).__name__} subclasses it)"
                return text, rule
    return None
