"""``Many``: several tensors that behave as one value, each operation one ``torch._foreach_*`` call.

The reference rules are written once, with the tensor methods they need (``add``, ``lerp``,
``addcmul``, ``sqrt``, ...), and run either on one parameter's tensors or on a whole param
group at once: :class:`Many` offers the same methods over a list of tensors, so checking a
group costs a fixed number of kernel launches instead of one per parameter and operation.
Every operation returns new tensors, except the in-place ``*_`` methods, which rules use only on
tensors they created themselves.

>>> a = Many([torch.tensor([1.0, 2.0]), torch.tensor([3.0])])
>>> (a * 2 + 1).sqrt().tensors
[tensor([1.7321, 2.2361]), tensor([2.6458])]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["A", "Many", "full_like", "max_abs", "unit_roundoff", "zeros_like"]


class Many:
    """A list of tensors with elementwise arithmetic over all of them (see the module doc)."""

    __slots__ = ("tensors",)

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = list(tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __repr__(self) -> str:
        return f"Many({len(self.tensors)} tensors)"

    # -- arithmetic returning new tensors ------------------------------------------------------
    def __add__(self, other: Many | float) -> Many:
        return Many(torch._foreach_add(self.tensors, _arg(other)))

    __radd__ = __add__

    def __sub__(self, other: Many | float) -> Many:
        return Many(torch._foreach_sub(self.tensors, _arg(other)))

    def __rsub__(self, other: float) -> Many:
        return self.neg().add_(other)

    def __mul__(self, other: Many | float) -> Many:
        return Many(torch._foreach_mul(self.tensors, _arg(other)))

    __rmul__ = __mul__

    def __truediv__(self, other: Many | float) -> Many:
        return Many(torch._foreach_div(self.tensors, _arg(other)))

    def __rtruediv__(self, other: float) -> Many:
        return Many(torch._foreach_reciprocal(self.tensors)).mul_(other)

    def __neg__(self) -> Many:
        return self.neg()

    def gt(self, other: float) -> Many:
        return Many([t.gt(other) for t in self.tensors])

    def lt(self, other: float) -> Many:
        return Many([t.lt(other) for t in self.tensors])

    def masked_fill(self, mask: Many, value: float) -> Many:
        return Many(
            [t.masked_fill(m, value) for t, m in zip(self.tensors, mask.tensors, strict=True)]
        )

    def add(self, other: Many, *, alpha: float = 1.0) -> Many:
        return Many(torch._foreach_add(self.tensors, other.tensors, alpha=alpha))

    def mul(self, other: Many | float) -> Many:
        return self * other

    def div(self, other: Many | float) -> Many:
        return self / other

    def neg(self) -> Many:
        return Many(torch._foreach_neg(self.tensors))

    def sqrt(self) -> Many:
        return Many(torch._foreach_sqrt(self.tensors))

    def abs(self) -> Many:
        return Many(torch._foreach_abs(self.tensors))

    def sign(self) -> Many:
        return Many(torch._foreach_sign(self.tensors))

    def clone(self) -> Many:
        return Many([t.clone() for t in self.tensors])

    def lerp(self, end: Many, weight: float) -> Many:
        return Many(torch._foreach_lerp(self.tensors, end.tensors, weight))

    def addcmul(self, a: Many, b: Many, *, value: float = 1.0) -> Many:
        return Many(torch._foreach_addcmul(self.tensors, a.tensors, b.tensors, value))

    def addcdiv(self, a: Many, b: Many, *, value: float = 1.0) -> Many:
        return Many(torch._foreach_addcdiv(self.tensors, a.tensors, b.tensors, value))

    def maximum(self, other: Many) -> Many:
        return Many(torch._foreach_maximum(self.tensors, other.tensors))

    def clamp(self, min: float, max: float) -> Many:
        out = torch._foreach_clamp_min(self.tensors, min)
        torch._foreach_clamp_max_(out, max)
        return Many(out)

    def where(self, condition: Many, other: Many | float) -> Many:
        """``self`` where ``condition`` holds, else ``other`` (as ``Tensor.where``)."""
        if isinstance(other, Many):
            triples = zip(self.tensors, condition.tensors, other.tensors, strict=True)
            return Many([t.where(c, o) for t, c, o in triples])
        pairs = zip(self.tensors, condition.tensors, strict=True)
        return Many([t.where(c, other) for t, c in pairs])

    # -- in place, only on tensors a rule made itself -------------------------------------------
    def add_(self, other: Many | float, *, alpha: float = 1.0) -> Many:
        if isinstance(other, Many):
            torch._foreach_add_(self.tensors, other.tensors, alpha=alpha)
        else:
            torch._foreach_add_(self.tensors, other * alpha)
        return self

    def mul_(self, other: Many | float) -> Many:
        torch._foreach_mul_(self.tensors, _arg(other))
        return self

    def div_(self, other: Many | float) -> Many:
        torch._foreach_div_(self.tensors, _arg(other))
        return self

    def nan_to_num_(self) -> Many:
        for t in self.tensors:
            t.nan_to_num_()
        return self

    def sqrt_(self) -> Many:
        torch._foreach_sqrt_(self.tensors)
        return self

    def abs_(self) -> Many:
        torch._foreach_abs_(self.tensors)
        return self

    def addcmul_(self, a: Many, b: Many, *, value: float = 1.0) -> Many:
        torch._foreach_addcmul_(self.tensors, a.tensors, b.tensors, value)
        return self

    def addcdiv_(self, a: Many, b: Many, *, value: float = 1.0) -> Many:
        torch._foreach_addcdiv_(self.tensors, a.tensors, b.tensors, value)
        return self


def _arg(other: Many | float) -> list[Tensor] | float:
    return other.tensors if isinstance(other, Many) else other


A = TypeVar("A", Tensor, Many)
"""A rule's array type: one tensor, or :class:`Many` for a whole group."""


def zeros_like(x: A) -> A:
    """Zeros shaped like ``x`` (a tensor, or each tensor of a :class:`Many`)."""
    if isinstance(x, Many):
        return Many([torch.zeros_like(t) for t in x.tensors])
    return torch.zeros_like(x)


def full_like(x: A, value: float) -> A:
    """``value`` everywhere, shaped like ``x``."""
    if isinstance(x, Many):
        return Many([torch.full_like(t, value) for t in x.tensors])
    return torch.full_like(x, value)


def unit_roundoff(x: A) -> float:
    """The machine epsilon of ``x``'s dtype (of its first tensor for a :class:`Many`)."""
    first = x.tensors[0] if isinstance(x, Many) else x
    return float(torch.finfo(first.dtype).eps)


def max_abs(tensors: Sequence[Tensor]) -> Tensor:
    """``max|t|`` of each tensor, as one 1-D tensor on their device (NaN where one holds a NaN).

    No host sync. Small tensors go through two foreach calls (``abs``, ``max``); large ones
    through one ``aminmax`` pass each, which needs no temporary (on CPU 3x faster than
    ``torch._foreach_norm(ord=inf)``).

    >>> max_abs([torch.tensor([1.0, -3.0]), torch.empty(0)])
    tensor([3., 0.])
    """
    if not tensors:
        return torch.zeros(0)
    sizes = [t.numel() for t in tensors]
    if min(sizes) > 0 and sum(sizes) < _SMALL and hasattr(torch, "_foreach_max"):
        return torch.stack(torch._foreach_max(torch._foreach_abs(list(tensors))))
    lows, highs = [], []
    for t in tensors:
        if t.numel() == 0:
            t = torch.zeros(1, dtype=t.dtype, device=t.device)
        low, high = torch.aminmax(t)
        lows.append(low)
        highs.append(high)
    return torch.maximum(torch.stack(highs), -torch.stack(lows))


_SMALL = 1 << 18  # elements in all: below it, temporaries cost less than a Python loop
