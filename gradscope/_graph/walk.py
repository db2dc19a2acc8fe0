"""Walk a tensor's ``grad_fn`` graph into compact lists, iteratively and doing little per node.

The walk records what it cannot get later (op names, edges, sequence numbers, which parameter
each leaf is) and nothing else: saved tensors are read when someone asks (``saved.py``), module
paths are resolved from the sequence numbers when nodes are built (``module_tags.py``). It hands
the node objects it touched to :mod:`gradscope._graph.safe_free` (see there why) and keeps none
itself; gradscope's :class:`Graph` holds no autograd node at all.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

from .._errors import GradscopeError
from .safe_free import HELD, SMALL, attach_safe_free

__all__ = [
    "GRAPH_FREED_HINT",
    "NORM_KEEPING",
    "VIEW_OPS",
    "GraphEdge",
    "GraphFreed",
    "GraphNode",
    "Leaf",
    "SavedTensor",
    "WalkResult",
    "op_name",
    "raise_freed",
    "topological",
    "walk",
]

_PREFIX = "torch::autograd::"
# Backward nodes that only reshape or reorder the gradient: they cannot create a NaN/Inf and
# the gradient's norm is the same on both sides, so grads=True does not hook them.
VIEW_OPS = frozenset(
    {
        "TBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "PermuteBackward0",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "AliasBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "UnsqueezeBackward0",
        "UnsqueezeBackward1",
        "ViewAsRealBackward0",
        "ViewAsComplexBackward0",
    }
)
# Nodes whose backward hands on the gradient with the same L2 norm and cannot make a finite
# gradient non-finite: views, plus copies and the scatters of select/slice (a zero tensor with
# the gradient in one place). With a single consumer, grads=True reads their norm from the edge
# into them instead of hooking them (a transformer layer has ~5 of them).
NORM_KEEPING = VIEW_OPS | frozenset(
    {"CloneBackward0", "SelectBackward0", "SliceBackward0", "AliasBackward0"}
)
GRAPH_FREED_HINT = (
    "call gradscope.graph() before loss.backward(), or pass retain_graph=True to backward()"
)
ACCUMULATE = "AccumulateGrad"


@dataclass(slots=True)
class SavedTensor:
    """One tensor an autograd node saved for backward (e.g. ``mat1`` of ``AddmmBackward0``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    is_parameter: bool = False
    storage: int = 0  # data pointer, to count memory shared by several nodes once


@dataclass(slots=True)
class GraphNode:
    """One node of the backward graph: an op, a parameter, another leaf, or a collapsed module.

    ``grad_norm`` is the L2 norm of the gradient that flowed into the node during the recorded
    backward pass (``grads=True`` only); for a collapsed module it is the gradient entering the
    module and ``grad_norm_out`` the gradient leaving it. ``seq`` is autograd's sequence number
    (the order nodes were created in forward; backward runs ready nodes highest first).
    """

    id: int
    op: str
    kind: str  # "op" | "parameter" | "leaf" | "module"
    param: str | None = None
    shape: tuple[int, ...] | None = None
    saved: tuple[SavedTensor, ...] = ()
    module: str | None = None
    module_source: str | None = None  # "forward" (tagged) | "parameters" (a hint)
    grad_norm: float | None = None
    grad_norm_out: float | None = None
    ops: int = 1
    params: tuple[str, ...] = ()
    saved_total: int | None = None  # collapsed modules: activation bytes, shared storage once
    seq: int | None = None

    @property
    def saved_bytes(self) -> int:
        """Bytes of saved activations (parameters excluded), storage shared within counted once."""
        if self.saved_total is not None:
            return self.saved_total
        seen: dict[int, int] = {}
        for s in self.saved:
            if not s.is_parameter:
                seen[s.storage or id(s)] = max(seen.get(s.storage or id(s), 0), s.nbytes)
        return sum(seen.values())

    @property
    def label(self) -> str:
        """``AccumulateGrad[fc3.bias]`` for parameters, the op name otherwise."""
        if self.kind == "parameter":
            return f"AccumulateGrad[{self.param}]" if self.param else "AccumulateGrad[parameter]"
        if self.kind == "leaf" and self.shape is not None:
            return f"AccumulateGrad[leaf {tuple(self.shape)}]"
        framework = FRAMEWORK_HOOKS.get(self.op)
        return f"{framework} [{self.op}]" if framework else self.op


# Nodes a framework puts in the backward graph for its own hooks, not model ops.
FRAMEWORK_HOOKS = {
    "RegisterPostBackwardFunctionBackward": "FSDP2 post-backward hook (reduce-scatter)",
}


@dataclass(slots=True)
class GraphEdge:
    """Gradient flows from ``src`` (nearer the loss) to ``dst``, as ``src``'s input ``slot``."""

    src: int
    dst: int
    slot: int
    grad_norm: float | None = None


@dataclass(frozen=True, slots=True)
class Leaf:
    """An ``AccumulateGrad`` node's tensor: its name (when known), shape, and kind."""

    name: str | None
    shape: tuple[int, ...]
    is_param: bool


@dataclass
class WalkResult:
    """The graph as parallel lists, indexed by node id (the order the walk first reached it)."""

    ops: list[str] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)  # -1 for leaves
    src: list[int] = field(default_factory=list)  # edge k: src[k] -> dst[k] as input slot[k]
    dst: list[int] = field(default_factory=list)
    slot: list[int] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)
    leaves: dict[int, Leaf] = field(default_factory=dict)
    topo: list[int] = field(default_factory=list)  # every node after all nodes that feed it
    keys: list[int] = field(default_factory=list)  # id() of each node while it lives
    holders: list[Any] = field(default_factory=list)  # safe-free holder (weakref) per node
    own_holders: list[Any] = field(default_factory=list)  # weakrefs to holders this walk made

    def __len__(self) -> int:
        return len(self.ops)


_OP_NAMES: dict[type, str] = {}


def op_name(fn: Any) -> str:
    """The node's op name (``MulBackward0``), looked up once per node type."""
    cls = type(fn)
    name = _OP_NAMES.get(cls)
    if name is None:
        full: str = fn.name()
        name = full[len(_PREFIX) :] if full.startswith(_PREFIX) else full
        if cls.__name__ == name:  # a type of its own; generic wrapper types are asked each time
            _OP_NAMES[cls] = name
    return name


class GraphFreed(Exception):
    """Raised when a node's saved tensors were already freed by backward()."""

    def __init__(self, op: str) -> None:
        super().__init__(op)
        self.op = op


def walk(
    roots: Sequence[torch.Tensor],
    param_names: dict[int, str],
    *,
    on_walked: Callable[[WalkResult, list[Any]], None] | None = None,
) -> WalkResult:
    """Visit every node reachable from ``roots`` once, without recursion.

    ``param_names`` maps ``id(parameter)`` to its name. ``on_walked`` sees the result and the
    node objects (index-aligned, ``None`` for leaf roots) before the walk lets go of them.
    """
    result = WalkResult()
    ops, seqs, keys = result.ops, result.seq, result.keys
    src, dst, slots = result.src, result.dst, result.slot
    leaves = result.leaves
    index: dict[int, int] = {}
    fns: list[Any] = []
    names = _OP_NAMES
    held_by = HELD.get
    parts: list[tuple[int, int]] = []  # index range first reached from each root
    held: dict[int, Any] = {}  # node -> the earlier walk's holder that keeps it
    try:
        for tensor in roots:
            first = len(fns)
            fn = tensor.grad_fn
            if fn is None:
                index[-first - 1] = first  # pragma: no mutate (never looked up: no id() is < 0)
                fns.append(None)
                ops.append(ACCUMULATE)
                seqs.append(-1)
                keys.append(0)
                leaves[first] = _leaf(tensor, param_names)
                result.roots.append(first)
                continue
            key = id(fn)
            if key in index:
                result.roots.append(index[key])
                continue
            index[key] = first
            fns.append(fn)
            ops.append("")  # pragma: no mutate (named when popped from the stack)
            seqs.append(-1)  # pragma: no mutate (set when popped: a root is never a leaf)
            keys.append(key)
            result.roots.append(first)
            stack = [first]
            while stack:
                i = stack.pop()
                fn = fns[i]
                name = names.get(type(fn)) or op_name(fn)  # pragma: no mutate
                # (a cache: op_name gives the same name)
                ops[i] = name
                if name == ACCUMULATE:
                    leaves[i] = _leaf(fn.variable, param_names)
                    continue
                seqs[i] = fn._sequence_nr()
                mark = held_by(keys[i])
                if mark is not None:
                    held[i] = mark
                k = 0
                for child, _ in fn.next_functions:
                    if child is not None:
                        key = id(child)
                        j = index.get(key)
                        if j is None:
                            j = len(fns)
                            index[key] = j
                            fns.append(child)
                            ops.append("")  # pragma: no mutate (named when popped)
                            seqs.append(-1)
                            keys.append(key)
                            stack.append(j)
                        src.append(i)
                        dst.append(j)
                        slots.append(k)
                    k += 1  # noqa: SIM113 (cheaper than enumerate in the hot loop)
            parts.append((first, len(fns)))
        result.topo = _order(result)
        _hand_over(result, fns, parts, held)
        parts = []  # pragma: no mutate (None and [] both skip the finally's hand-over)
        if on_walked is not None:
            on_walked(result, fns)
    finally:
        if parts:  # the walk failed midway: the nodes it touched still need a holder
            _hand_over(result, fns, parts, held)
        fns.clear()
        index.clear()
    return result


def _leaf(var: torch.Tensor, param_names: dict[int, str]) -> Leaf:
    name = param_names.get(id(var))
    return Leaf(name, tuple(var.shape), name is not None or isinstance(var, torch.nn.Parameter))


def _order(result: WalkResult) -> list[int]:
    """Consumers before the nodes they feed.

    Autograd numbers nodes as forward creates them, and an op is created after its inputs, so
    decreasing sequence numbers are such an order (leaves last). Checked edge by edge: nodes
    made in other threads count separately, and then Kahn's algorithm decides.
    """
    seq = result.seq
    order = sorted(range(len(seq)), key=seq.__getitem__, reverse=True)
    at = seq.__getitem__
    if all(map(operator.gt, map(at, result.src), map(at, result.dst))):
        return order
    return topological(len(seq), result.src, result.dst)


def _hand_over(
    result: WalkResult, fns: list[Any], parts: list[tuple[int, int]], held: dict[int, Any]
) -> None:
    """Give each root's nodes to a safe-free holder on that root (leaves need none)."""
    if not fns:
        return
    order = result.topo or list(range(len(fns)))
    has_kids = [False] * len(fns)
    for s in result.src:
        has_kids[s] = True
    result.holders = [None] * len(fns)
    for i, mark in held.items():
        result.holders[i] = mark
    for first, stop in parts:
        part = [
            i for i in order if first <= i < stop and has_kids[i] and (i == first or i not in held)
        ]
        if len(part) < 2:
            continue
        children: list[list[int]] | None = None
        if len(part) > SMALL:  # pragma: no mutate (>= is as safe: SMALL is a margin, not an edge)
            pos = {i: k for k, i in enumerate(part)}
            children = [[] for _ in part]
            for s, d in zip(result.src, result.dst, strict=True):  # pragma: no mutate (same length)
                ps = pos.get(s)
                if ps is not None:
                    pd = pos.get(d)
                    if pd is not None:
                        children[ps].append(pd)
        holder = attach_safe_free([fns[i] for i in part], children)
        if holder is not None:
            result.own_holders.append(holder)
            for i in part:
                result.holders[i] = holder


def topological(n: int, src: list[int], dst: list[int]) -> list[int]:
    """Kahn's algorithm: consumers (nearer the loss) before the nodes they feed."""
    indegree = [0] * n
    children: list[list[int]] = [[] for _ in range(n)]
    for s, d in zip(src, dst, strict=True):  # pragma: no mutate (edge lists: equal length)
        indegree[d] += 1
        children[s].append(d)
    ready = [i for i in range(n) if indegree[i] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in children[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if len(order) != n:  # a cycle cannot happen in autograd; keep every node anyway
        seen = set(order)
        order.extend(i for i in range(n) if i not in seen)
    return order


def raise_freed(op: str, grads: bool) -> NoReturn:
    if grads:
        raise GradscopeError(
            f"graph(..., grads=True) was called after backward() already ran and freed the graph "
            f"({op} has no saved tensors left); grads=True records what flows in the *next* "
            f"backward, so call it before loss.backward()"
        ) from None
    raise GradscopeError(
        f"the autograd graph was freed by backward() ({op} has no saved tensors left); "
        f"{GRAPH_FREED_HINT}"
    ) from None
