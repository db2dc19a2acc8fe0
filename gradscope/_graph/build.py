"""``gradscope.graph(loss)``: validate the outputs, walk, hint modules, wrap in a Graph."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from .._errors import GradscopeError
from .._naming import ParamsLike, describe, named_parameters, reject_meta
from .data import GraphData
from .grad_flow import GradRecorder
from .graph import Graph
from .module_tags import module_path_of
from .walk import VIEW_OPS, GraphEdge, GraphFreed, GraphNode, raise_freed, walk

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
    params: ParamsLike | None = None,
    grads: bool = False,
) -> Graph:
    """Walk the backward graph behind ``outputs`` (usually the loss).

    ``params`` (a module, a name -> tensor mapping, or an iterable of tensors or (name, tensor)
    pairs such as ``net.parameters()``) names the ``AccumulateGrad`` leaves.
    ``grads=True``, called before ``backward()``, records the gradient through every node.

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
    roots = _roots(outputs)
    if grads:  # gradients on the meta device have no values to record
        reject_meta({f"output {k}": t for k, t in enumerate(roots)}, "graph(grads=True)", "outputs")
    names: dict[int, str] = {}
    ptrs: set[int] = set()
    if params is not None:
        resolved = named_parameters(params)
        for name, tensor in resolved.params.items():
            names[id(tensor)] = name
            if tensor.layout == torch.strided:
                ptrs.add(tensor.data_ptr())
    recorder = GradRecorder() if grads else None
    # A walk allocates several objects per node and frees none, so Python's cyclic collector
    # would sweep everything alive again and again (2x the time on a 12,000-node chain).
    collecting = gc.isenabled()
    gc.disable()
    try:
        result = walk(
            roots,
            names,
            ptrs,
            module_of=module_path_of,
            on_walked=recorder.attach if recorder is not None else None,
        )
        result.nodes = _hint_modules(result.nodes, result.edges)
        nodes = tuple(result.nodes)  # in id order
        data = GraphData(nodes, tuple(result.edges), tuple(result.roots))
    except GraphFreed as err:
        raise_freed(err.op, grads)
    finally:
        if collecting:
            gc.enable()
    return Graph(data, walked=result, recorder=recorder)


def _hint_modules(nodes: list[GraphNode], edges: list[GraphEdge]) -> list[GraphNode]:
    """Without forward tags, an op that uses a module's parameters is placed in that module."""
    if not any(n.kind == "parameter" and n.param for n in nodes):
        return nodes
    by_id = {n.id: n for n in nodes}
    kids: dict[int, list[int]] = {}
    for e in edges:
        kids.setdefault(e.src, []).append(e.dst)

    def param_module(i: int) -> str | None:
        n = by_id[i]
        if n.kind == "parameter" and n.param is not None:
            return n.param.rpartition(".")[0]
        if n.kind == "op" and n.op in VIEW_OPS and len(kids.get(i, ())) == 1:
            child = by_id[kids[i][0]]
            if child.kind == "parameter" and child.param is not None:
                return child.param.rpartition(".")[0]
        return None

    out = []
    for n in nodes:
        if n.kind == "op" and n.module is None:
            found = {m for m in (param_module(k) for k in kids.get(n.id, ())) if m is not None}
            own = param_module(n.id)
            if own is not None:
                found = {own}
            if len(found) == 1:
                n = replace(n, module=found.pop(), module_source="parameters")
        out.append(n)
    return out
