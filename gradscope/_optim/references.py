"""Reference update rules: what one optimizer step should do to a parameter and its state.

Each built-in rule is written from the update rule documented for its torch.optim class (the
pseudo-code in the class docstring), as plain tensor arithmetic, never by calling torch.optim.
A rule reads the parameter, its gradient, the optimizer's state for it before the step and
the param group's hyperparameters, and returns an :class:`Update`: the parameter's new value
and every state entry the optimizer keeps after the step. The built-in rules run on one
tensor or, through :class:`~gradscope._optim.arrays.Many`, on a whole param group at once.

``reference=`` takes the same shape for any other optimizer, written with plain tensors::

    rule(param, grad, state, group) -> new param            # parameters only
    rule(param, grad, state, group) -> (new param, state)   # parameters and state

>>> p, g = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.5])
>>> sgd(p, g, {}, {"lr": 0.1}).param
tensor([0.9500, 2.0500])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .rules.adam import adam, adamax, adamw, nadam, radam, sparse_adam
from .rules.adaptive import adadelta, adagrad, rmsprop
from .rules.base import Update
from .rules.sgd import asgd, rprop, sgd

__all__ = [
    "BUILTIN",
    "Reference",
    "Rule",
    "Update",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "asgd",
    "builtin_names",
    "builtin_reference",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sparse_adam",
    "user_rule",
]

Reference = Callable[[Tensor, Tensor, dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class Rule:
    """A reference rule and how the checker may call it.

    ``builtin`` rules take scalar state as floats, return an :class:`Update` with analytic
    error terms and, when ``elementwise``, run on a whole group at once; ``sparse`` ones take
    a sparse gradient as it is (SparseAdam) instead of its dense form. A user's rule is called
    per parameter with tensors, and its sensitivity to rounding is measured by nudging.
    """

    text: str
    function: Callable[..., Any]
    builtin: bool = True
    elementwise: bool = True
    sparse: bool = False


# Looked up along the optimizer's MRO, so a subclass of AdamW (itself an Adam) takes AdamW's rule.
BUILTIN: tuple[tuple[type[torch.optim.Optimizer], Callable[..., Any]], ...] = (
    (torch.optim.AdamW, adamw),
    (torch.optim.Adam, adam),
    (torch.optim.NAdam, nadam),
    (torch.optim.RAdam, radam),
    (torch.optim.Adamax, adamax),
    (torch.optim.SparseAdam, sparse_adam),
    (torch.optim.SGD, sgd),
    (torch.optim.ASGD, asgd),
    (torch.optim.Rprop, rprop),
    (torch.optim.RMSprop, rmsprop),
    (torch.optim.Adagrad, adagrad),
    (torch.optim.Adadelta, adadelta),
)


def builtin_names() -> str:
    """The optimizer classes with a built-in rule, for error messages."""
    return ", ".join(cls.__name__ for cls, _ in BUILTIN)


def builtin_reference(optimizer: torch.optim.Optimizer) -> Rule | None:
    """The rule for ``optimizer``'s class or its nearest torch.optim base.

    >>> builtin_reference(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)).text
    'the documented torch.optim.SGD update rule'
    """
    for base in type(optimizer).__mro__:
        for cls, function in BUILTIN:
            if base is cls:
                text = f"the documented torch.optim.{cls.__name__} update rule"
                if type(optimizer) is not cls:
                    text += f" ({type(optimizer).__name__} subclasses it)"
                sparse = function is sparse_adam
                return Rule(text, function, elementwise=not sparse, sparse=sparse)
    return None


def user_rule(function: Callable[..., Any]) -> Rule:
    """Wrap a ``reference=`` function."""
    label = getattr(function, "__qualname__", None) or repr(function)
    return Rule(label, function, builtin=False, elementwise=False)
