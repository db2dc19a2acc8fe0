"""``gradscope.graph(loss)``: validate the outputs, walk, hint modules, wrap in a Graph."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._errors import GradscopeError
from .._naming import ParamsLike, describe, named_parameters, reject_meta, unsharded_aliases
from .grad_flow import GradRecorder
from .graph import Graph
from .module_tags import install_module_tagging, module_paths
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
    *outputs: Any,
    params: ParamsLike | None = None,
    grads: bool = False,
    saved: bool = True,
) -> Graph:
    """Walk the backward graph behind ``outputs`` (usually the loss).

    ``params`` (a module, a name -> tensor mapping, or an iterable of tensors or (name, tensor)
    pairs such as ``net.parameters()``) names the ``AccumulateGrad`` leaves.
    ``grads=True``, called before ``backward()``, records the gradient through every node.
    Saved tensors (shapes, bytes) are read when first asked for; ``saved=True`` also reads them
    when backward starts (it frees them) if the graph is still alive. ``saved=False`` skips
    that: a loop that builds a graph every step only to read ``first_nonfinite`` pays less.

    ``graph(model, *inputs)`` runs ``model(*inputs)`` itself, noting which module created each
    node, and draws the graph behind every tensor it returns: each op lands in the module that
    ran it (under :func:`gradscope.watch` the watch notes the modules; without either, an op is
    placed by the parameters it uses).

    >>> import gradscope, torch
    >>> x = torch.tensor([-1.0, 4.0], requires_grad=True)
    >>> loss = x.sqrt().sum()
    >>> g = gradscope.graph(loss, grads=True)
    >>> loss.backward()
    >>> g.first_nonfinite.node.op
    'SqrtBackward0'
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
    >>> sorted({n.module for n in gradscope.graph(net, torch.randn(2, 3)).nodes if n.kind == "op"})
    ['0', '1']
    """
    if outputs and isinstance(outputs[0], nn.Module):
        return _graph_of_module(outputs[0], outputs[1:], params, grads, saved)
    if not isinstance(grads, bool):
        raise GradscopeError(f"grads= takes True or False, not {describe(grads)}")
    if not isinstance(saved, bool):
        raise GradscopeError(f"saved= takes True or False, not {describe(saved)}")
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
        if isinstance(params, nn.Module):  # FSDP2: autograd sees the unsharded copies
            names.update(unsharded_aliases(params, names))
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


def _graph_of_module(
    model: nn.Module,
    inputs: tuple[Any, ...],
    params: ParamsLike | None,
    grads: bool,
    saved: bool,
) -> Graph:
    if grads:
        raise GradscopeError(
            "graph(model, *inputs) draws the graph of one forward pass; grads=True needs your "
            "own backward: compute the loss under gradscope.watch(model) (it notes the modules), "
            "call gradscope.graph(loss, grads=True), then loss.backward()"
        )
    if not inputs:
        raise GradscopeError(
            f"graph(model, *inputs) needs the inputs to run {type(model).__name__} on, e.g. "
            "gradscope.graph(net, torch.randn(1, 3, 32, 32))"
        )
    handles = install_module_tagging(model)
    try:
        output = model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    found = [t for t in _tensors_in(output) if t.requires_grad]
    if not found:
        raise GradscopeError(
            f"{type(model).__name__} returned {describe(output)}: no tensor that requires grad, "
            "so there is no backward graph (does the model have trainable parameters?)"
        )
    return graph(*found, params=model if params is None else params, saved=saved)


def _tensors_in(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model's output: tensors, tuples, lists and mappings (ModelOutput)."""
    found, todo = [], [output]
    while todo:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, Mapping):
            todo.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            todo.extend(reversed(item))
    return found


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
