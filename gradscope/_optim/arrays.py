"""``Many``: several tensors that behave as one value, each operation one ``torch._foreach_*`` call.

The reference rules are written once, with the tensor methods they need (``add``, ``lerp``,
``addcmul``, ``sqrt``, ...), and run either on one parameter's tensors or on a whole param
group at once: :class:`Many` offers the same methods over a list of tensors, so checking a
group costs a fixed number of kernel launches instead of one per parameter and operation.
Every operation returns new tensors, except the in-place ``*_`` methods, which rules use only on
tensors they created themselves.

With a :class:`Pool`, large results go into buffers kept from one step to the next (through
``out=``): on CPU a fresh 16 MB tensor costs about three passes over memory in page faults.

>>> a = Many([torch.tensor([1.0, 2.0]), torch.tensor([3.0])])
>>> (a * 2 + 1).sqrt().tensors
[tensor([1.7321, 2.2361]), tensor([2.6458])]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

__all__ = [
    "A",
    "Many",
    "Pool",
    "full_like",
    "max_abs",
    "max_abs_of_differences",
    "unit_roundoff",
    "zeros_like",
]

# Below this many elements in all, one foreach call beats a Python loop of out= calls.
_SMALL = 1 << 18


class Pool:
    """Buffers reused from one checked step to the next, to keep CPU page faults away.

    ``take`` hands out a buffer shaped like a tensor; ``release`` takes them all back at the
    end of a step. It holds at most what one step needed (about the size of the parameters
    times the number of state entries plus two).
    """

    def __init__(self) -> None:
        self._free: dict[tuple[object, ...], list[Tensor]] = {}
        self._taken: list[Tensor] = []

    def take(self, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or like.dtype
        key = (tuple(like.shape), dtype, like.device)
        free = self._free.get(key)
        out = free.pop() if free else torch.empty(like.shape, dtype=dtype, device=like.device)
        self._taken.append(out)
        return out

    def release(self) -> None:
        for t in self._taken:
            self._free.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)
        self._taken = []

    def clear(self) -> None:
        self._free, self._taken = {}, []


Single = Callable[[int, Tensor], object]


class Many:
    """A list of tensors with elementwise arithmetic over all of them (see the module doc)."""

    __slots__ = ("pool", "tensors")

    def __init__(self, tensors: Sequence[Tensor], pool: Pool | None = None) -> None:
        self.tensors = list(tensors)
        self.pool = pool

    def __len__(self) -> int:
        return len(self.tensors)

    def __repr__(self) -> str:
        return f"Many({len(self.tensors)} tensors)"

    def _new(
        self,
        foreach: Callable[[], Sequence[Tensor]],
        single: Single,
        dtype: torch.dtype | None = None,
    ) -> Many:
        """One op's result: a foreach call, or pooled buffers filled with ``single(i, out)``."""
        pool = self.pool
        if pool is None or sum(t.numel() for t in self.tensors) < _SMALL:
            return Many(foreach(), pool)
        outs = []
        for i, t in enumerate(self.tensors):
            out = pool.take(t, dtype)
            single(i, out)
            outs.append(out)
        return Many(outs, pool)

    # -- arithmetic returning new tensors ------------------------------------------------------
    def __add__(self, other: Many | float) -> Many:
        return self._new(
            lambda: torch._foreach_add(self.tensors, _arg(other)),
            lambda i, o: torch.add(self.tensors[i], _at(other, i), out=o),
        )

    __radd__ = __add__

    def __sub__(self, other: Many | float) -> Many:
        return self._new(
            lambda: torch._foreach_sub(self.tensors, _arg(other)),
            lambda i, o: torch.sub(self.tensors[i], _at(other, i), out=o),
        )

    def __rsub__(self, other: float) -> Many:
        return self.neg().add_(other)

    def __mul__(self, other: Many | float) -> Many:
        return self._new(
            lambda: torch._foreach_mul(self.tensors, _arg(other)),
            lambda i, o: torch.mul(self.tensors[i], _at(other, i), out=o),
        )

    __rmul__ = __mul__

    def __truediv__(self, other: Many | float) -> Many:
        return self._new(
            lambda: torch._foreach_div(self.tensors, _arg(other)),
            lambda i, o: torch.div(self.tensors[i], _at(other, i), out=o),
        )

    def __rtruediv__(self, other: float) -> Many:
        return self._new(
            lambda: torch._foreach_reciprocal(self.tensors),
            lambda i, o: torch.reciprocal(self.tensors[i], out=o),
        ).mul_(other)

    def __neg__(self) -> Many:
        return self.neg()

    def gt(self, other: float) -> Many:
        return self._new(
            lambda: [t.gt(other) for t in self.tensors],
            lambda i, o: torch.gt(self.tensors[i], other, out=o),
            torch.bool,
        )

    def lt(self, other: float) -> Many:
        return self._new(
            lambda: [t.lt(other) for t in self.tensors],
            lambda i, o: torch.lt(self.tensors[i], other, out=o),
            torch.bool,
        )

    def masked_fill(self, mask: Many, value: float) -> Many:
        return self.clone()._masked_fill_(mask, value)

    def _masked_fill_(self, mask: Many, value: float) -> Many:
        for t, m in zip(self.tensors, mask.tensors, strict=True):
            t.masked_fill_(m, value)
        return self

    def add(self, other: Many, *, alpha: float = 1.0) -> Many:
        return self._new(
            lambda: torch._foreach_add(self.tensors, other.tensors, alpha=alpha),
            lambda i, o: torch.add(self.tensors[i], other.tensors[i], alpha=alpha, out=o),
        )

    def mul(self, other: Many | float) -> Many:
        return self * other

    def div(self, other: Many | float) -> Many:
        return self / other

    def neg(self) -> Many:
        return self._new(
            lambda: torch._foreach_neg(self.tensors),
            lambda i, o: torch.neg(self.tensors[i], out=o),
        )

    def sqrt(self) -> Many:
        return self._new(
            lambda: torch._foreach_sqrt(self.tensors),
            lambda i, o: torch.sqrt(self.tensors[i], out=o),
        )

    def abs(self) -> Many:
        return self._new(
            lambda: torch._foreach_abs(self.tensors),
            lambda i, o: torch.abs(self.tensors[i], out=o),
        )

    def sign(self) -> Many:
        return self._new(
            lambda: torch._foreach_sign(self.tensors),
            lambda i, o: torch.sign(self.tensors[i], out=o),
        )

    def clone(self) -> Many:
        return self._new(
            lambda: [t.clone() for t in self.tensors],
            lambda i, o: o.copy_(self.tensors[i]),
        )

    def lerp(self, end: Many, weight: float) -> Many:
        return self._new(
            lambda: torch._foreach_lerp(self.tensors, end.tensors, weight),
            lambda i, o: torch.lerp(self.tensors[i], end.tensors[i], weight, out=o),
        )

    def addcmul(self, a: Many, b: Many, *, value: float = 1.0) -> Many:
        return self._new(
            lambda: torch._foreach_addcmul(self.tensors, a.tensors, b.tensors, value),
            lambda i, o: torch.addcmul(
                self.tensors[i], a.tensors[i], b.tensors[i], value=value, out=o
            ),
        )

    def addcdiv(self, a: Many, b: Many, *, value: float = 1.0) -> Many:
        return self._new(
            lambda: torch._foreach_addcdiv(self.tensors, a.tensors, b.tensors, value),
            lambda i, o: torch.addcdiv(
                self.tensors[i], a.tensors[i], b.tensors[i], value=value, out=o
            ),
        )

    def maximum(self, other: Many) -> Many:
        return self._new(
            lambda: torch._foreach_maximum(self.tensors, other.tensors),
            lambda i, o: torch.maximum(self.tensors[i], other.tensors[i], out=o),
        )

    def clamp(self, min: float, max: float) -> Many:
        def both() -> list[Tensor]:
            out = list(torch._foreach_clamp_min(self.tensors, min))
            torch._foreach_clamp_max_(out, max)
            return out

        return self._new(both, lambda i, o: torch.clamp(self.tensors[i], min, max, out=o))

    def where(self, condition: Many, other: Many | float) -> Many:
        """``self`` where ``condition`` holds, else ``other`` (as ``Tensor.where``)."""
        return self._new(
            lambda: [
                torch.where(c, t, _at(other, i))
                for i, (t, c) in enumerate(zip(self.tensors, condition.tensors, strict=True))
            ],
            lambda i, o: torch.where(
                condition.tensors[i],
                self.tensors[i],
                torch.as_tensor(_at(other, i), dtype=o.dtype, device=o.device),
                out=o,
            ),
        )

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


def _at(other: Many | float, i: int) -> Tensor | float:
    return other.tensors[i] if isinstance(other, Many) else other


A = TypeVar("A", Tensor, Many)
"""A rule's array type: one tensor, or :class:`Many` for a whole group."""


def zeros_like(x: A) -> A:
    """Zeros shaped like ``x`` (a tensor, or each tensor of a :class:`Many`)."""
    if isinstance(x, Many):
        return x._new(lambda: [torch.zeros_like(t) for t in x.tensors], lambda i, o: o.zero_())
    return torch.zeros_like(x)


def full_like(x: A, value: float) -> A:
    """``value`` everywhere, shaped like ``x``."""
    if isinstance(x, Many):
        return x._new(
            lambda: [torch.full_like(t, value) for t in x.tensors], lambda i, o: o.fill_(value)
        )
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


def max_abs_of_differences(tensors: Sequence[Tensor]) -> Tensor:
    """:func:`max_abs` for differences, which are often exactly zero (the rule computed what
    torch computed, bit for bit): one fast 2-norm pass finds those, and only the others get
    the slower max pass. One host sync.

    >>> max_abs_of_differences([torch.zeros(3), torch.tensor([0.5, -2.0])])
    tensor([0., 2.])
    """
    if not tensors or sum(t.numel() for t in tensors) < _SMALL:
        return max_abs(tensors)
    norms = torch.stack(torch._foreach_norm(list(tensors)))
    nonzero = [i for i, n in enumerate(norms.tolist()) if n != 0]
    out = torch.zeros_like(norms)
    if nonzero:
        found = max_abs([tensors[i] for i in nonzero])
        out[torch.tensor(nonzero, device=out.device)] = found.to(out.dtype)
    return out
