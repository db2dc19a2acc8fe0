"""One forward pass as the forward checks see it: the pass in progress, the pass whose sums are
on their way, the resolved record, and the reduction that makes one sum per tensor.

:mod:`.forward` owns the hooks and decides what each sum means; this module only holds them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .reading import host_copy_for

if TYPE_CHECKING:
    from .replay import Held

__all__ = [
    "IN",
    "OUT",
    "REDUCERS",
    "BackwardOrigin",
    "ForwardOrigin",
    "ForwardRecord",
    "LivePass",
    "PendingPass",
    "Reducer",
    "finite_sum",
    "floating_tensors",
]

IN, OUT = 0, 1  # a sum of a module's input, of its output
FLATTEN_LIMIT = 64  # tensors looked at per call (a module returning thousands is not checked)


@dataclass(frozen=True)
class ForwardOrigin:
    """Where the first non-finite value of one forward pass appeared."""

    module: str  # the module whose own code made it ("" is the model itself)
    where: str  # "input" | "output" | "before"
    child: str | None = None  # with "before": the child module it was about to call

    def describe(self) -> str:
        name = f"'{self.module}'" if self.module else "the model's own forward()"
        if self.where == "input":
            return "the input given to the model already holds NaN/Inf"
        if self.where == "before":
            return f"in {name}, before it called '{self.child}'"
        return f"in {name} (its inputs were finite)"


@dataclass(frozen=True)
class BackwardOrigin:
    """Where a NaN/Inf gradient was born from finite forward values, found by a replay."""

    pass_index: int
    from_loss: bool  # the gradient the loss sent into the model was already NaN/Inf
    origin: Any = None  # the graph's NonfiniteGradient (node, input, value, reason)
    graph: Any = None  # the replayed pass's gradscope Graph, for Graph.around()
    note: str | None = None  # why nothing was found


@dataclass
class ForwardRecord:
    """One outermost module call (a forward pass), resolved."""

    index: int
    root: str  # the path of the outermost module called ("" for the model itself)
    grad_enabled: bool
    called: frozenset[str]
    no_grad: frozenset[str]  # modules called while autograd was off
    origin: ForwardOrigin | None
    output_finite: bool
    input_sum: float | None = None  # the sum of the model's first input: tells batches apart
    passes: list[int] = field(default_factory=list)  # backward passes that followed it


class LivePass:
    """The forward pass in progress."""

    __slots__ = (
        "called",
        "events",
        "grad_enabled",
        "held",
        "index",
        "no_grad",
        "root",
        "seen",
        "sums",
    )

    def __init__(self, index: int, root: int, grad_enabled: bool, held: Held | None) -> None:
        self.index = index
        self.root = root
        self.grad_enabled = grad_enabled
        self.held = held  # what a replay needs, while one may still be needed
        self.events: list[tuple[int, int, int]] = []  # (owner, module, IN | OUT)
        self.sums: list[torch.Tensor] = []
        self.seen: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}
        self.called: list[int] = []
        self.no_grad: list[int] = []


class PendingPass:
    """One finished forward pass whose sums are still tensors (read when first needed)."""

    __slots__ = (
        "called",
        "event",
        "events",
        "grad_enabled",
        "held",
        "host",
        "index",
        "no_grad",
        "passes",
        "root",
    )

    def __init__(self, live: LivePass, stacked: torch.Tensor | None) -> None:
        self.index, self.root, self.grad_enabled = live.index, live.root, live.grad_enabled
        self.events, self.called, self.no_grad = live.events, live.called, live.no_grad
        self.held = live.held
        self.passes: list[int] = []  # backward passes that followed it, while it waits
        self.event: Any = None
        self.host = stacked
        if stacked is not None:
            # A fresh HostCopy per pass: several passes may wait unread (forward passes before
            # one backward), so a reused buffer could be overwritten before it is read.
            self.host, self.event = host_copy_for(stacked.device)(stacked)

    def ready(self) -> bool:
        """The sums have arrived (an event that cannot be asked waits for :meth:`values`)."""
        if self.event is None:
            return True
        query = getattr(self.event, "query", None)
        return bool(query()) if query is not None else False

    def values(self) -> list[float]:
        if self.host is None:
            return []
        if self.event is not None:
            self.event.synchronize()
        values: list[float] = self.host.tolist()
        return values


def floating_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Floating tensors in a module's inputs or output: tensors, tuples, lists, dicts."""
    if type(value) is tuple and len(value) == 1:
        value = value[0]  # the usual inputs, (x,): as the walk below would, without a list
    if isinstance(value, torch.Tensor):  # the usual single tensor, without the walk
        if (value.is_floating_point() or value.is_complex()) and value.layout == torch.strided:
            yield value
        return
    todo = [value]
    seen = 0
    while todo and seen < FLATTEN_LIMIT:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            seen += 1
            if (item.is_floating_point() or item.is_complex()) and item.layout == torch.strided:
                yield item
        elif isinstance(item, (tuple, list)):
            todo.extend(reversed(item))
        elif isinstance(item, Mapping):
            todo.extend(reversed(list(item.values())))


def finite_sum(t: torch.Tensor) -> torch.Tensor:
    """A float32 0-d tensor that is NaN/Inf when ``t`` holds a NaN/Inf (one pass, on device)."""
    values = t.detach()
    if values.is_complex():
        values = torch.view_as_real(values)
    if values.dtype == torch.float64:
        total = values.sum()
        return (total - total).float()  # 0 or NaN: a float64 sum never overflows float32 inputs
    return values.sum(dtype=torch.float32)


Reducer = Callable[[torch.Tensor], torch.Tensor]
_FLOAT32 = torch.float32


def _sum(t: torch.Tensor) -> torch.Tensor:
    """finite_sum of a real dtype other than float64 (a tensor that needs no gradient makes no
    graph: it is not detached)."""
    return (t.detach() if t.requires_grad else t).sum(dtype=_FLOAT32)


def _sum_float32(t: torch.Tensor) -> torch.Tensor:
    """finite_sum of a float32 tensor: the same sum, without parsing a dtype argument."""
    return (t.detach() if t.requires_grad else t).sum()


class _ByDtype(dict[torch.dtype, "Reducer | None"]):
    """dtype -> how :func:`finite_sum` reduces it (None: not floating, not checked), decided the
    first time each dtype is seen, so a module call asks one dict lookup."""

    def __missing__(self, dtype: torch.dtype) -> Reducer | None:
        reducer: Reducer | None = None
        if dtype.is_complex or dtype == torch.float64:
            reducer = finite_sum
        elif dtype == _FLOAT32:
            reducer = _sum_float32
        elif dtype.is_floating_point:
            reducer = _sum
        self[dtype] = reducer
        return reducer


REDUCERS = _ByDtype()  # finite_sum, by dtype; None for dtypes that are not checked
