"""Record the gradient that flows through each backward node (``graph(..., grads=True)``).

Each hooked node keeps one on-device ``torch._foreach_norm`` of the gradients it produced (and,
where several consumers feed it, of the sum it received). Nothing is copied to the host during
backward: the norms are stacked and read with one ``.tolist()`` per device when first asked for.
On CPU the cost is the extra pass over each gradient, not a host sync (BRIEF: 1.17x-1.34x).

A norm of NaN or Inf marks a non-finite gradient. Like ``clip_grad_norm_``, the norm is taken
in the gradient's dtype, so a finite float32 gradient whose L2 norm exceeds ~3e38 reads as Inf.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._errors import GradscopeWarning
from .walk import VIEW_OPS, WalkResult

__all__ = ["Flow", "GradRecorder", "Origin"]


@dataclass(frozen=True)
class Origin:
    """Where a non-finite gradient was born: node ``node``, for its input ``slot``."""

    node: int
    slot: int | None
    value: str  # "nan" | "inf"
    reason: str


@dataclass(frozen=True)
class Flow:
    node_norms: list[float | None]
    edge_norms: list[float | None]
    origin: Origin | None
    executed: int


class GradRecorder:
    """Hooks on the walked nodes; the hooks hold only a weak reference to the recorder."""

    def __init__(self) -> None:
        self.values: dict[int, tuple[tuple[int, ...], list[torch.Tensor]]] = {}
        self.order: list[int] = []
        self.in_pass = False
        self.passes = 0
        self.hooked: set[int] = set()
        self.errors: list[Exception] = []
        self._flow: Flow | None = None

    def attach(self, result: WalkResult, fns: list[Any]) -> None:
        indegree = [0] * len(fns)
        for e in result.edges:
            indegree[e.dst] += 1
        ref = weakref.ref(self)
        for node in result.nodes:
            fn = fns[node.id]
            if fn is None:
                continue
            if indegree[node.id] == 1 and (node.kind != "op" or node.op in VIEW_OPS):
                # a view (same norm on both sides, cannot create a NaN) or a leaf with a single
                # consumer: its norm is the norm on the one edge into it, read from the consumer
                continue
            want_in = node.kind != "op" or indegree[node.id] != 1
            fn.register_hook(_make_hook(ref, node.id, want_in))
            self.hooked.add(node.id)

    def _start_pass(self) -> None:
        if self.in_pass:
            return
        self.in_pass = True
        self.values.clear()
        self.order.clear()
        self._flow = None
        ref = weakref.ref(self)

        def end() -> None:
            rec = ref()
            if rec is not None:
                rec.in_pass = False
                rec.passes += 1

        torch.autograd.Variable._execution_engine.queue_callback(end)

    def flow(self, result: WalkResult) -> Flow | None:
        """Norms per node and edge, and the first non-finite origin; ``None`` before backward."""
        if self.passes == 0 or self.in_pass:
            return None
        if self._flow is None:
            if self.errors:  # a warning raised inside a hook (under -W error) would break backward
                warnings.warn(
                    GradscopeWarning(
                        f"gradscope.graph(grads=True) could not record {len(self.errors)} "
                        f"gradient(s); norms there are missing. First: {self.errors[0]!r}"
                    ),
                    stacklevel=3,
                )
            self._flow = _resolve(self, result)
        return self._flow


def _make_hook(
    ref: weakref.ref[GradRecorder], i: int, want_in: bool
) -> Callable[[tuple[torch.Tensor | None, ...], tuple[torch.Tensor | None, ...]], None]:
    def hook(
        grad_inputs: tuple[torch.Tensor | None, ...], grad_outputs: tuple[torch.Tensor | None, ...]
    ) -> None:
        rec = ref()
        if rec is None:
            return
        try:
            rec._start_pass()
            slots: list[int] = []
            grads: list[torch.Tensor] = []
            for slot, g in enumerate(grad_inputs):
                if g is not None:
                    slots.append(slot)
                    grads.append(g)
            if want_in:
                for k, g in enumerate(grad_outputs):
                    if g is not None:
                        slots.append(-1 - k)
                        grads.append(g)
            rec.values[i] = (tuple(slots), _norms(grads))
            rec.order.append(i)
        except Exception as err:  # never break the user's backward: reported when read
            rec.errors.append(err)

    return hook


def _norms(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """L2 norms of ``grads`` on device, accumulated in float64.

    In float32 the sum of squares overflows to Inf once an element passes ~1.8e19, which would
    name a huge but finite gradient as the birthplace of an Inf; float64 cannot overflow on any
    float32 value. It costs ~4x the float32 kernel, small next to the hooks themselves.
    """
    if not grads:
        return []
    if all(g.layout == torch.strided for g in grads):
        return list(torch._foreach_norm(grads, 2, dtype=torch.float64))
    return [
        torch.linalg.vector_norm(g.coalesce().values() if g.is_sparse else g, dtype=torch.float64)
        for g in grads
    ]


def _read(rec: GradRecorder) -> dict[tuple[int, int], float]:
    """Every recorded norm, with one stack and one ``.tolist()`` per (device, dtype)."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[tuple[int, int]], list[Any]]] = {}
    for i, (slots, norms) in rec.values.items():
        for slot, norm in zip(slots, norms, strict=True):
            keys, tensors = groups.setdefault((norm.device, norm.dtype), ([], []))
            keys.append((i, slot))
            tensors.append(norm)
    read: dict[tuple[int, int], float] = {}
    for keys, tensors in groups.values():
        read.update(zip(keys, torch.stack(tensors).tolist(), strict=True))
    return read


def _combine(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def _resolve(rec: GradRecorder, result: WalkResult) -> Flow:
    read = _read(rec)
    n = max(len(result.topo), max((node.id for node in result.nodes), default=-1) + 1)
    incoming: dict[int, float] = {}
    out: dict[tuple[int, int], float] = {}
    for (i, slot), v in read.items():
        if slot < 0:
            incoming.setdefault(i, 0.0)
            incoming[i] = math.hypot(incoming[i], v) if math.isfinite(v) else v
        else:
            out[(i, slot)] = v
    into: list[list[int]] = [[] for _ in range(n)]
    by_src: list[list[int]] = [[] for _ in range(n)]
    for k, e in enumerate(result.edges):
        into[e.dst].append(k)
        by_src[e.src].append(k)
    edge_norms: list[float | None] = [None] * len(result.edges)
    node_norms: list[float | None] = [None] * n
    for i in result.topo:
        if i in incoming:
            node_norms[i] = incoming[i]
        elif len(into[i]) == 1:
            node_norms[i] = edge_norms[into[i][0]]
        for k in by_src[i]:
            e = result.edges[k]
            if i in rec.hooked:
                edge_norms[k] = out.get((i, e.slot))
            else:  # a view read through: what left it is what came in
                edge_norms[k] = node_norms[i]
    return Flow(
        node_norms,
        edge_norms,
        _origin(rec, result, incoming, out, into, edge_norms),
        len(rec.order),
    )


def _bad(v: float | None) -> bool:
    return v is not None and not math.isfinite(v)


def _kind(v: float) -> str:
    return "nan" if math.isnan(v) else "inf"


def _origin(
    rec: GradRecorder,
    result: WalkResult,
    incoming: dict[int, float],
    out: dict[tuple[int, int], float],
    into: list[list[int]],
    edge_norms: list[float | None],
) -> Origin | None:
    for i in rec.order:
        edges_in_ok = not any(_bad(edge_norms[k]) for k in into[i])
        if not edges_in_ok:
            continue
        got = incoming.get(i)
        if got is not None and not math.isfinite(got):
            if not into[i]:
                reason = f"the gradient passed to backward() is already {_kind(got)}"
            else:
                reason = f"the sum of its {len(into[i])} incoming finite gradients is {_kind(got)}"
            return Origin(i, None, _kind(got), reason)
        slots, _ = rec.values[i]
        bad = [
            (slot, v)
            for slot in slots
            if slot >= 0 and (v := out.get((i, slot))) is not None and not math.isfinite(v)
        ]
        if bad:
            said = " and ".join(f"{_kind(v)} for input {slot}" for slot, v in bad)
            slot, v = bad[0]
            return Origin(i, slot, _kind(v), f"it produced a gradient with {said}")
    return None
