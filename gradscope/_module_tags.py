"""Tag the autograd nodes a module creates with the module's dotted path (``node.metadata``).

Every autograd node gets a sequence number from a per-thread counter when it is created
(``torch._C._autograd._get_sequence_nr()`` peeks at it for ~30 ns). A forward pre-hook notes the
counter, the forward hook notes it again: the nodes a module call created are exactly those
numbered in between. Nested calls give nested ranges, so the innermost module owns a node.
Nothing is walked while the inner modules run: when the outermost call returns, one walk from its
outputs visits each new node once and writes ``metadata[MODULE_PATH_KEY]``.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
>>> handles = install_module_tagging(net)
>>> out = net(torch.randn(1, 2))
>>> out.grad_fn.metadata[MODULE_PATH_KEY]
'1'
>>> for h in handles:
...     h.remove()
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.hooks import RemovableHandle

from ._safe_free import attach_safe_free

__all__ = ["MODULE_PATH_KEY", "install_module_tagging"]

MODULE_PATH_KEY = "gradscope.module"
_peek = torch._C._autograd._get_sequence_nr


class _Calls(threading.local):
    def __init__(self) -> None:
        self.stack: list[tuple[int, str, int]] = []  # (id(module), path, first sequence number)
        # (start, end, nesting depth, path) of finished calls inside the outermost one
        self.done: list[tuple[int, int, int, str]] = []


_CALLS = _Calls()


def install_module_tagging(root: nn.Module) -> list[RemovableHandle]:
    """Hook every submodule of ``root`` (itself included, path ``""``); return the handles."""
    handles: list[RemovableHandle] = []
    for path, module in root.named_modules():
        handles.append(module.register_forward_pre_hook(_make_pre(path)))
        handles.append(module.register_forward_hook(_make_post(path), always_call=True))
    return handles


def _make_pre(path: str) -> Any:
    def pre(module: nn.Module, args: Any) -> None:
        _CALLS.stack.append((id(module), path, _peek()))

    return pre


def _make_post(path: str) -> Any:
    def post(module: nn.Module, args: Any, output: Any) -> None:
        calls = _CALLS.stack
        key = id(module)
        # pop to our own entry even if an inner forward raised and skipped its hook
        while calls and calls[-1][0] != key:
            calls.pop()
        if not calls:
            return
        _, _, start = calls.pop()
        end = _peek()
        if end == start:
            return  # no node created (no_grad, inference mode, or no differentiable input)
        _CALLS.done.append((start, end, len(calls), path))
        if not calls:
            done = _CALLS.done
            _CALLS.done = []
            _tag(output, start, end, done)

    return post


def _tag(output: Any, start: int, end: int, calls: list[tuple[int, int, int, str]]) -> None:
    owner: list[str | None] = [None] * (end - start)
    # outer calls first (earlier start, later end, shallower), so inner ranges overwrite them
    for s, e, _, path in sorted(calls, key=lambda c: (c[0], -c[1], c[2])):
        owner[s - start : e - start] = [path] * (e - s)
    seen: set[int] = set()
    boundary: list[Any] = []  # nodes made before this call: keep ids stable until we are done
    inputs: dict[int, list[int]] = {}
    for leaf in tree_flatten(output)[0]:
        if not isinstance(leaf, torch.Tensor) or leaf.grad_fn is None:
            continue
        # one part per output: the nodes first reached from it, freed safely with it
        walked: list[Any] = []
        stack: list[Any] = [leaf.grad_fn]
        while stack:
            fn = stack.pop()
            if id(fn) in seen:
                continue
            seen.add(id(fn))
            nr = fn._sequence_nr()
            if not start <= nr < end:
                boundary.append(fn)  # made before this call, or an AccumulateGrad (2**64 - 1)
                continue
            walked.append(fn)
            owned = owner[nr - start]
            if owned is not None:
                fn.metadata[MODULE_PATH_KEY] = owned
            kids = [child for child, _ in fn.next_functions if child is not None]
            inputs[id(fn)] = [id(c) for c in kids]
            stack.extend(kids)
        # newest first is a topological order: a node is always created after its inputs
        walked.sort(key=lambda f: -f._sequence_nr())
        pos = {id(f): k for k, f in enumerate(walked)}
        attach_safe_free(walked, [[pos[c] for c in inputs[id(f)] if c in pos] for f in walked])
    boundary.clear()
