"""``gradscope.graph(loss)``: validate the outputs, walk, hint modules, wrap in a Graph."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._errors import GradscopeError
from .._naming import describe, named_parameters
from .grad_flow import GradRecorder
from .graph import Graph
from .module_tags import module_paths
from .saved import SavedReader, probe_freed
from .skeleton import Walked
from .walk import GraphFreed, WalkResult, raise_freed, walk

__all__ = ["graph"]


def _roots(outputs: tuple[Any, ...]) -> list[torch.Tensor]:
    items: list[Any] = list(outputs)
    if len(items) == 1 and isinstance(items[0], (list, tuple)):
        items = list(items[0])
    if not items:
        raise GradscopeError(
            "graph() needs at least one tensor, e.g. gradscope.graph(loss); got nothing"
        )
    problems = []
    for k, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            problems.append(f"output {k} is {describe(t)}, not a tensor")
        elif t.grad_fn is None and not t.requires_grad:
            problems.append(
                f"output {k} ({describe(t)}) has no grad_fn and does not require grad: it was "
                f"computed under torch.no_grad()/inference_mode, detached, or from tensors that "
                f"do not require grad; compute it with autograd on (e.g. from the model's output)"
            )
    if problems:
        raise GradscopeError("graph() cannot walk its input: " + "; ".join(problems))
    return items


def graph(
    *outputs: torch.Tensor | Sequence[torch.Tensor],
    params: nn.Module | Mapping[str, torch.Tensor] | None = None,
    grads: bool = False,
    saved: bool = True,
) -> Graph:
    """Walk the backward graph behind ``outputs`` (usually the loss).

    ``params`` (a module or a name -> tensor mapping) names the ``AccumulateGrad`` leaves.
    ``grads=True``, called before ``backward()``, records the gradient through every node.
    Saved tensors (shapes, bytes) are read when first asked for; ``saved=True`` also reads them
    when backward starts (it frees them) if the graph is still alive. ``saved=False`` skips
    that: a loop that builds a graph every step only to read ``first_nonfinite`` pays less.

    >>> import gradscope, torch
    >>> x = torch.tensor([-1.0, 4.0], requires_grad=True)
    >>> loss = x.sqrt().sum()
    >>> g = gradscope.graph(loss, grads=True)
    >>> loss.backward()
    >>> g.first_nonfinite.node.op
    'SqrtBackward0'
    """
    if not isinstance(grads, bool):
        raise GradscopeError(f"grads= takes True or False, not {describe(grads)}")
    if not isinstance(saved, bool):
        raise GradscopeError(f"saved= takes True or False, not {describe(saved)}")
    roots = _roots(outputs)
    names: dict[int, str] = {}
    ptrs: set[int] = set()
    if params is not None:
        resolved = named_parameters(params)
        for name, tensor in resolved.params.items():
            names[id(tensor)] = name
            if tensor.layout == torch.strided:
                ptrs.add(tensor.data_ptr())
    recorder = GradRecorder() if grads else None
    paths = module_paths()
    readers: list[SavedReader] = []

    def on_walked(result: WalkResult, fns: list[Any]) -> None:
        probe_freed(fns)
        reader = SavedReader(result, fns, ptrs)
        readers.append(reader)
        # Saved tensors are read on first look; if the graph is still alive when its root dies
        # or (saved=True) when backward starts, which frees them, they are read then.
        read = _read_later(reader)
        for ref in result.own_holders:
            holder = ref()
            if holder is not None:
                holder.on_free = read
        for r in dict.fromkeys(result.roots) if saved else ():
            if fns[r] is not None and result.ops[r] != "AccumulateGrad":
                fns[r].register_prehook(_at_backward(read))
        if recorder is not None:
            recorder.attach(result, fns)

    # A walk allocates several objects per node and frees none, so Python's cyclic collector
    # would sweep everything alive again and again (2x the time on a 12,000-node chain).
    collecting = gc.isenabled()
    gc.disable()
    try:
        result = walk(roots, names, on_walked=on_walked)
    except GraphFreed as err:
        raise_freed(err.op, grads)
    finally:
        if collecting:
            gc.enable()
    return Graph(Walked(result, readers[0], paths, recorder))


def _at_backward(read: Any) -> Any:
    def prehook(grad_outputs: Any) -> None:
        read()  # never raises (SavedReader.read)

    return prehook


def _read_later(reader: SavedReader) -> Any:
    ref = weakref.ref(reader)

    def read() -> None:
        alive = ref()
        if alive is not None:
            alive.read()

    return read
