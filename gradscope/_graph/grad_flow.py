"""Record the gradient that flows through each backward node (``graph(..., grads=True)``).

Each hooked node keeps the L2 norm of the gradients it produced (and, where several consumers
feed it, of the sum it received). Views and copies (``NORM_KEEPING``) and leaves with one
consumer are not hooked: their norm is the norm on the edge into them.

How the norms are taken, and why:

* Each gradient is normed in its hook and let go. (Holding small gradients to norm them in one
  batch at the end of the pass was tried: it is no faster on CPU, where ``_foreach_norm`` loops
  over its tensors, and holding them stops autograd from accumulating in place.)
* On CPU a norm is a number as soon as it is computed (no device to wait for), so the pass
  knows at its end whether anything was non-finite; reading ``first_nonfinite`` after a clean
  pass costs nothing. float32 norms are taken in float32 (a float64 norm converts the whole
  gradient first: ~10x the time, 20 ms a step on an MLP 4x1024); a float32 norm that reads
  Inf is taken again in float64, so that a huge but finite gradient (elements above ~1.8e19
  square to Inf) is never called Inf.
* On other devices nothing is copied to the host during backward: norms stay on the device,
  accumulated in float64 (no overflow, no second look needed), and are read with one
  ``.tolist()`` per device when first asked for.

A norm of NaN or Inf marks a non-finite gradient. **Which node is "first"**: among all nodes
whose incoming gradients were finite and whose outgoing gradient (or the sum of its incoming
ones) was not, the one backward ran first. That is the order autograd executed the nodes, as
the hooks saw it; torch runs ready nodes with the highest sequence number first, so among
independent sources this is usually the one created last in forward (nearest the loss). Every
such node is an independent source (``Graph.nonfinite_origins``, in that same order).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._errors import warn_at_caller
from .walk import ACCUMULATE, NORM_KEEPING, WalkResult

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
    origins: tuple[Origin, ...]  # independent sources, in backward execution order


Norm = float | torch.Tensor  # a float on CPU, a 0-d float64 tensor on other devices
_INCOMING = -1  # the slot under which a node's hook records what came into it


class GradRecorder:
    """Hooks on the walked nodes; the hooks hold only a weak reference to the recorder."""

    def __init__(self) -> None:
        self.values: dict[int, tuple[tuple[int, ...], list[Norm]]] = {}
        self.order: list[int] = []
        self.in_pass = False  # pragma: no mutate (None is as false)
        # a pass was recorded and has ended
        self.ended = False  # pragma: no mutate (None is as false)
        self.hooked: set[int] = set()
        self.errors: list[Exception] = []
        self._warned = False  # pragma: no mutate (None is as false)
        self._new_pass()

    def _new_pass(self) -> None:
        self.values.clear()
        self.order.clear()
        # a non-finite norm was seen (CPU norms are known by the pass end)
        self.bad = False  # pragma: no mutate (None is as false)
        self.pending = False  # some norms are still tensors on a device
        self._flow: Flow | None = None
        self._origins: tuple[Origin, ...] | None = None

    def attach(self, result: WalkResult, fns: list[Any]) -> None:
        indegree = [0] * len(fns)
        for d in result.dst:
            indegree[d] += 1
        ref = weakref.ref(self)
        ops = result.ops
        for i, fn in enumerate(fns):
            if fn is None:
                continue
            op = ops[i]
            leaf = op == ACCUMULATE
            if indegree[i] == 1 and (leaf or op in NORM_KEEPING):
                # a view or copy (same norm on both sides, cannot create a NaN) or a leaf with a
                # single consumer: its norm is the norm on the one edge into it
                continue
            fn.register_hook(_make_hook(ref, i, leaf or indegree[i] != 1))
            self.hooked.add(i)

    def _start_pass(self) -> None:
        if self.in_pass:
            return
        self.in_pass = True
        self._new_pass()
        ref = weakref.ref(self)

        def end() -> None:
            rec = ref()
            if rec is not None:
                rec.in_pass = False  # pragma: no mutate (None is as false)
                rec.ended = True

        torch.autograd.Variable._execution_engine.queue_callback(end)

    def ready(self) -> bool:
        """A backward pass was recorded and has ended."""
        if not self.ended or self.in_pass:
            return False
        if self.errors and not self._warned:
            self._warned = True  # a warning raised inside a hook (under -W error) breaks backward
            warn_at_caller(
                f"gradscope.graph(grads=True) could not record {len(self.errors)} "
                f"gradient(s); norms there are missing. First: {self.errors[0]!r}"
            )
        if self.pending:
            _read(self)
        return True

    def origins(self, result: WalkResult) -> tuple[Origin, ...] | None:
        """Independent non-finite sources in execution order; ``None`` before backward.

        After a clean pass this is a flag check: nothing is resolved.
        """
        if not self.ready():
            return None
        if self._origins is None:
            flow = self.flow(result) if self.bad else None
            self._origins = flow.origins if flow is not None else ()
        return self._origins

    def flow(self, result: WalkResult) -> Flow | None:
        """Norms per node and edge, and the non-finite origins; ``None`` before backward."""
        if not self.ready():
            return None
        if self._flow is None:
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
            if not rec.in_pass:
                rec._start_pass()
            slots: list[int] = []
            grads: list[torch.Tensor] = []
            for slot, g in enumerate(grad_inputs):
                if g is not None:
                    slots.append(slot)
                    grads.append(g)
            if want_in:
                for g in grad_outputs:
                    if g is not None:
                        slots.append(_INCOMING)  # the norm of all of them, below
                        grads.append(g)
            rec.values[i] = (tuple(slots), _norms(grads, rec))
            rec.order.append(i)
        except Exception as err:  # never break the user's backward: reported when read
            rec.errors.append(err)

    return hook


_LOW = (torch.float16, torch.bfloat16)
# devices whose norms are read at once; tests empty it to run the device path on CPU
HOST: tuple[str, ...] = ("cpu",)


def _norms(grads: list[torch.Tensor], rec: GradRecorder) -> list[Norm]:
    """L2 norms of ``grads`` (see the module docstring)."""
    if not grads:
        return []
    if all(g.layout == torch.strided and g.device.type in HOST for g in grads):
        return _cpu_norms(grads, rec)
    rec.pending = True
    if all(g.layout == torch.strided for g in grads):  # pragma: no mutate
        # (the per-tensor branch below gives the same norms, one call each)
        return list(torch._foreach_norm(grads, dtype=torch.float64))  # ord 2
    return [
        torch.linalg.vector_norm(g.coalesce().values() if g.is_sparse else g, dtype=torch.float64)
        for g in grads
    ]


def _cpu_norms(grads: list[torch.Tensor], rec: GradRecorder) -> list[Norm]:
    norm = torch.linalg.vector_norm
    values = [
        norm(g, dtype=torch.float32 if g.dtype in _LOW else None).item() for g in grads
    ]  # one call each: _foreach_norm on CPU loops anyway and needs a stack to read
    out: list[Norm] = []
    for g, v in zip(grads, values, strict=True):  # pragma: no mutate (equal lengths)
        if v == math.inf:  # a real Inf, or float32 squares that overflowed: look again
            v = norm(g, dtype=torch.float64).item()
        if not math.isfinite(v):
            rec.bad = True
        out.append(v)
    return out


def _read(rec: GradRecorder) -> None:
    """Device norms to floats, with one stack and one ``.tolist()`` per (device, dtype)."""
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[list[Norm], int, Any]]] = {}
    for _, norms in rec.values.values():
        for k, v in enumerate(norms):
            if isinstance(v, torch.Tensor):
                key = (v.device, v.dtype)  # pragma: no mutate (float64 on 1 device without 2 GPUs)
                groups.setdefault(key, []).append((norms, k, v))  # pragma: no mutate (as above)
    for items in groups.values():
        read = torch.stack([v for _, _, v in items]).tolist()
        for (norms, k, _), value in zip(items, read, strict=True):  # pragma: no mutate
            norms[k] = value  # (above: read has one value per item)
            if not math.isfinite(value):
                rec.bad = True
    rec.pending = False  # pragma: no mutate (a second read finds no tensor left: only slower)


def _resolve(rec: GradRecorder, result: WalkResult) -> Flow:
    n = len(result.ops)
    incoming: dict[int, float] = {}
    out: dict[tuple[int, int], float] = {}
    for i, (slots, norms) in rec.values.items():
        for slot, norm in zip(slots, norms, strict=True):  # pragma: no mutate (equal lengths)
            v = float(norm)  # ready() has read any device norms
            if slot == _INCOMING:
                incoming[i] = math.hypot(incoming.get(i, 0.0), v)  # several outputs: one norm
            else:
                out[(i, slot)] = v
    into: list[list[int]] = [[] for _ in range(n)]
    by_src: list[list[int]] = [[] for _ in range(n)]
    for k, (s, d) in enumerate(zip(result.src, result.dst, strict=True)):  # pragma: no mutate
        # (src and dst are built together, one entry per edge)
        into[d].append(k)
        by_src[s].append(k)
    edge_norms: list[float | None] = [None] * len(result.src)
    node_norms: list[float | None] = [None] * n
    hooked, slots_of = rec.hooked, result.slot
    for i in result.topo:
        if i in incoming:
            node_norms[i] = incoming[i]
        elif len(into[i]) == 1:
            node_norms[i] = edge_norms[into[i][0]]
        for k in by_src[i]:
            if i in hooked:
                edge_norms[k] = out.get((i, slots_of[k]))
            else:  # a view read through: what left it is what came in
                edge_norms[k] = node_norms[i]
    return Flow(node_norms, edge_norms, _origins(rec, incoming, out, into, edge_norms))


def _kind(v: float) -> str:
    return "nan" if math.isnan(v) else "inf"


def _origins(
    rec: GradRecorder,
    incoming: dict[int, float],
    out: dict[tuple[int, int], float],
    into: list[list[int]],
    edge_norms: list[float | None],
) -> tuple[Origin, ...]:
    """Every node (execution order) with finite gradients in and a non-finite one out."""
    found = []
    for i in rec.order:
        if any(v is not None and not math.isfinite(v) for v in (edge_norms[k] for k in into[i])):
            continue  # it only passed on what it was given
        got = incoming.get(i)
        if got is not None and not math.isfinite(got):
            if not into[i]:
                reason = f"the gradient passed to backward() is already {_kind(got)}"
            else:
                reason = f"the sum of its {len(into[i])} incoming finite gradients is {_kind(got)}"
            found.append(Origin(i, None, _kind(got), reason))
            continue
        slots, _ = rec.values[i]
        bad = [
            (slot, v)
            for slot in slots
            if slot != _INCOMING and (v := out.get((i, slot))) is not None and not math.isfinite(v)
        ]
        if bad:
            said = " and ".join(f"{_kind(v)} for input {slot}" for slot, v in bad)
            slot, v = bad[0]
            found.append(Origin(i, slot, _kind(v), f"it produced a gradient with {said}"))
    return tuple(found)
