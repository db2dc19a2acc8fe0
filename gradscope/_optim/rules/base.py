"""What a reference rule returns, and how it reads hyperparameters.

A rule is ``rule(param, grad, state, group) -> Update``: ``param`` and ``grad`` are the values
just before the step (a tensor, or a :class:`~gradscope._optim.arrays.Many` for a whole param
group), ``state`` the optimizer's state for them before the step (elementwise entries as arrays,
scalar entries such as ``step`` as floats; empty before the first step) and ``group`` the param
group's hyperparameters. It changes none of its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic

from torch import Tensor

from ..arrays import A

__all__ = ["Update", "array", "flag", "num", "pair", "scalar", "steps_taken"]


@dataclass
class Update(Generic[A]):
    """The expected result of one step for one parameter (or one group of them).

    ``param`` is the new value. ``state`` holds every state entry the optimizer keeps after the
    step, under torch's names. ``error`` is the rule's analytic sensitivity: for ``"param"``
    or a state entry, a magnitude ``m`` (array or float) such that two correct implementations
    may differ by up to about ``eps(dtype) * max(m)`` *beyond* the usual rounding of the
    values themselves; rules fill it only where an update amplifies rounding (a normalising
    denominator after L2 weight decay has cancelled the gradient, a centred variance).
    ``change``, when a rule has it for free, is ``(factor, array)`` with
    ``param - param_before == factor * array``, which saves the checker a pass (SGD: ``-lr`` and
    the momentum buffer).
    """

    param: A
    state: dict[str, A | float] = field(default_factory=dict)
    error: dict[str, A | float] = field(default_factory=dict)
    change: tuple[float, A] | None = None


def num(value: Any) -> float:
    """A hyperparameter as a Python float (torch allows tensors for lr and betas)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def flag(group: Mapping[str, Any], key: str) -> bool:
    return bool(group.get(key, False))


def pair(group: Mapping[str, Any], key: str, default: tuple[float, float]) -> tuple[float, float]:
    first, second = group.get(key, default)
    return num(first), num(second)


def scalar(state: Mapping[str, Any], key: str, default: float) -> float:
    """A scalar state entry (``step``, ``mu_product``, ``eta``) as a float."""
    value = state.get(key)
    return default if value is None else num(value)


def steps_taken(state: Mapping[str, Any]) -> float:
    return scalar(state, "step", 0.0)


def array(state: Mapping[str, A | float], key: str) -> A | None:
    """An elementwise state entry (``exp_avg``, ``momentum_buffer``), or None before it exists."""
    value = state.get(key)
    if value is None or isinstance(value, (int, float)):
        return None
    return value
