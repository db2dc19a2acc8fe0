"""Walk a tensor's ``grad_fn`` graph into plain nodes and edges, iteratively.

The walk hands the node objects it touched to :mod:`gradscope._graph.safe_free` (see there why) and
keeps none itself; gradscope's :class:`Graph` holds no autograd node at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

from .._errors import GradscopeError
from .safe_free import HELD_KEY, attach_safe_free

__all__ = [
    "GRAPH_FREED_HINT",
    "VIEW_OPS",
    "GraphEdge",
    "GraphFreed",
    "GraphNode",
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
GRAPH_FREED_HINT = (
    "call gradscope.graph() before loss.backward(), or pass retain_graph=True to backward()"
)


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
    module and ``grad_norm_out`` the gradient leaving it.
    """

    id: int
    op: str
    kind: str  # "op" | "parameter" | "leaf" | "module"
    param: str | None = None
    shape: tuple[int, ...] | None = None
    saved: tuple[SavedTensor, ...] = ()
    module: str | None = None
    module_source: str | None = None  # "forward" (tagged under watch) | "parameters" (a hint)
    grad_norm: float | None = None
    grad_norm_out: float | None = None
    ops: int = 1
    params: tuple[str, ...] = ()
    saved_total: int | None = None  # collapsed modules: activation bytes, shared storage once

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
        return self.op


@dataclass(slots=True)
class GraphEdge:
    """Gradient flows from ``src`` (nearer the loss) to ``dst``, as ``src``'s input ``slot``."""

    src: int
    dst: int
    slot: int
    grad_norm: float | None = None


@dataclass
class WalkResult:
    nodes: list[GraphNode] = field(default_factory=list)
    edges: list[GraphEdge] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)
    topo: list[int] = field(default_factory=list)  # every node after all nodes that feed it


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


_SAVED_NAMES: dict[type, tuple[tuple[str, str], ...]] = {}
_DTYPES: dict[torch.dtype, str] = {}


def _saved_names(fn: Any) -> tuple[tuple[str, str], ...]:
    """``(name, attribute)`` of the tensors this node type saves; ``dir()`` once per type."""
    cls = type(fn)
    names = _SAVED_NAMES.get(cls)
    if names is None:
        names = tuple(
            (name, "saved_tensors" if name == "tensors" else "_saved_" + name)
            for name in (
                attr[len("_raw_saved_") :] for attr in dir(fn) if attr.startswith("_raw_saved_")
            )
        )  # a custom autograd.Function keeps ctx.save_for_backward's tensors as saved_tensors
        _SAVED_NAMES[cls] = names
    return names


def _saved(fn: Any, param_ptrs: set[int]) -> tuple[SavedTensor, ...]:
    names = _saved_names(fn)
    if not names:
        return ()
    out = []
    for name, attr in names:
        try:
            value = getattr(fn, attr)
        except RuntimeError as err:
            if "freed" in str(err):
                raise GraphFreed(op_name(fn)) from None
            raise
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            out.append(_describe(name, value, param_ptrs))
        elif isinstance(value, (list, tuple)):
            out.extend(
                _describe(f"{name}[{k}]", t, param_ptrs)
                for k, t in enumerate(value)
                if isinstance(t, torch.Tensor)
            )
    return tuple(out)


def _describe(name: str, t: torch.Tensor, param_ptrs: set[int]) -> SavedTensor:
    try:
        ptr = t.data_ptr()
    except RuntimeError:  # sparse and other storage-less layouts
        ptr = 0
    dtype = _DTYPES.get(t.dtype)
    if dtype is None:
        dtype = _DTYPES[t.dtype] = str(t.dtype).removeprefix("torch.")
    return SavedTensor(name, tuple(t.shape), dtype, t.nbytes, ptr in param_ptrs, ptr)


class GraphFreed(Exception):
    """Raised by the walk when a node's saved tensors were already freed by backward()."""

    def __init__(self, op: str) -> None:
        super().__init__(op)
        self.op = op


def walk(
    roots: Sequence[torch.Tensor],
    param_names: dict[int, str],
    param_ptrs: set[int],
    *,
    module_of: Callable[[Any], str | None],
    on_walked: Callable[[WalkResult, list[Any]], None] | None = None,
) -> WalkResult:
    """Visit every node reachable from ``roots`` once, without recursion.

    ``param_names`` maps ``id(parameter)`` to its name, ``param_ptrs`` holds the parameters'
    data pointers (to tell saved weights from saved activations). ``on_walked`` sees the result
    and the node objects (index-aligned, ``None`` for leaf roots) before the walk lets go of them.
    """
    result = WalkResult()
    index: dict[int, int] = {}
    fns: list[Any] = []
    stack: list[int] = []

    def visit(fn: Any) -> int:
        key = id(fn)
        i = index.get(key)
        if i is None:
            i = len(fns)
            index[key] = i
            fns.append(fn)
            nodes.append(None)
            stack.append(i)
        return i

    nodes: list[GraphNode | None] = []
    parts: list[tuple[int, int]] = []  # index range first reached from each root
    held: set[int] = set()  # nodes an earlier walk's holder already keeps
    try:
        for tensor in roots:
            first = len(fns)
            if tensor.grad_fn is None:
                index[-first - 1] = first  # a key no id() can take
                fns.append(None)
                nodes.append(_leaf_node(first, tensor, param_names))
                result.roots.append(first)
                continue
            result.roots.append(visit(tensor.grad_fn))
            while stack:
                i = stack.pop()
                fn = fns[i]
                name = op_name(fn)
                if name == "AccumulateGrad":
                    node = _leaf_node(i, fn.variable, param_names)
                else:
                    meta = fn.metadata
                    module = module_of(fn)
                    if HELD_KEY in meta:
                        held.add(i)
                    node = GraphNode(
                        i,
                        name,
                        "op",
                        None,
                        None,
                        _saved(fn, param_ptrs),
                        module,
                        None if module is None else "forward",
                    )
                    for slot, (child, _) in enumerate(fn.next_functions):
                        if child is not None:
                            result.edges.append(GraphEdge(i, visit(child), slot))
                nodes[i] = node
            parts.append((first, len(fns)))
        result.nodes = [n for n in nodes if n is not None]
        result.topo = topological(len(fns), result.edges)
        if on_walked is not None:
            on_walked(result, fns)
    finally:
        stack.clear()
        fn = None
        order = result.topo or list(range(len(fns)))
        kids: dict[int, list[int]] = {}
        for e in result.edges:
            kids.setdefault(e.src, []).append(e.dst)
        for first, stop in parts:
            # leaves (AccumulateGrad) never free recursively: they need no holder
            part = [
                i
                for i in order
                if first <= i < stop and kids.get(i) and (i == first or i not in held)
            ]
            pos = {i: k for k, i in enumerate(part)}
            attach_safe_free(
                [fns[i] for i in part], [[pos[c] for c in kids[i] if c in pos] for i in part]
            )
        fns.clear()
        index.clear()
    return result


def _leaf_node(i: int, var: torch.Tensor, param_names: dict[int, str]) -> GraphNode:
    name = param_names.get(id(var))
    is_param = name is not None or isinstance(var, torch.nn.Parameter)
    module = name.rpartition(".")[0] if name is not None else None
    return GraphNode(
        id=i,
        op="AccumulateGrad",
        kind="parameter" if is_param else "leaf",
        param=name,
        shape=tuple(var.shape),
        module=module,
        module_source="parameters" if module is not None else None,
    )


def topological(n: int, edges: list[GraphEdge]) -> list[int]:
    """Kahn's algorithm: consumers (nearer the loss) before the nodes they feed."""
    indegree = [0] * n
    children: list[list[int]] = [[] for _ in range(n)]
    for e in edges:
        indegree[e.dst] += 1
        children[e.src].append(e.dst)
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
