"""Which module created each autograd node, without touching a node during the forward pass.

Every autograd node gets a sequence number from a per-thread counter when it is created
(``torch._C._autograd._get_sequence_nr()`` peeks at it for ~30 ns). A forward pre-hook notes the
counter, the forward hook notes it again: the nodes a module call created are exactly those
numbered in between. Nested calls give nested ranges, so the innermost module owns a node. The
ranges of the latest outermost calls are kept per thread; :func:`module_path_of` answers for a
node when a graph is walked. Nothing is walked or written while the model runs, so the forward
pass pays for the hook calls only.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
>>> handles = install_module_tagging(net)
>>> out = net(torch.randn(1, 2))
>>> module_path_of(out.grad_fn)
'1'
>>> for h in handles:
...     h.remove()
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._hooks import CopySafe

__all__ = ["ModulePaths", "install_module_tagging", "module_path_of", "module_paths"]

_peek = torch._C._autograd._get_sequence_nr
# Outermost calls remembered per thread: graph() of an output from an older forward pass falls
# back to parameter-name hints.
HISTORY = 64


class _Call:
    """One outermost module call: nodes numbered [start, end) and the calls made inside it.

    The per-node owner table is built on the first lookup, so the forward pass only appends.
    """

    __slots__ = ("_owner", "calls", "end", "start")

    def __init__(self, start: int, end: int, calls: list[tuple[int, int, int, str]]) -> None:
        self.start, self.end, self.calls = start, end, calls
        self._owner: tuple[str | None, ...] | None = None

    def owner(self, nr: int) -> str | None:
        if self._owner is None:
            owner: list[str | None] = [None] * (self.end - self.start)
            # outer calls first (earlier start, later end, shallower): inner ones overwrite
            for s, e, _, path in sorted(self.calls, key=lambda c: (c[0], -c[1], c[2])):
                owner[s - self.start : e - self.start] = [path] * (e - s)
            self._owner = tuple(owner)
        return self._owner[nr - self.start]


class _Calls(threading.local):
    def __init__(self) -> None:
        self.stack: list[tuple[int, str, int]] = []  # (id(module), path, first sequence number)
        # (start, end, nesting depth, path) of finished calls inside the outermost one
        self.done: list[tuple[int, int, int, str]] = []
        self.history: deque[_Call] = deque(maxlen=HISTORY)
        self.starts: list[int] = []  # history's starts, for bisect


_CALLS = _Calls()


def install_module_tagging(root: nn.Module) -> list[RemovableHandle]:
    """Hook every submodule of ``root`` (itself included, path ``""``); return the handles."""
    handles: list[RemovableHandle] = []
    for path, module in root.named_modules():
        # CopySafe: a deepcopy or pickle of the model carries inert hooks instead of these
        handles.append(module.register_forward_pre_hook(CopySafe(_pre, path)))
        handles.append(module.register_forward_hook(CopySafe(_post, path), always_call=True))
    return handles


def module_path_of(fn: Any) -> str | None:
    """The dotted path of the innermost tagged module whose forward created node ``fn``."""
    history = _CALLS.history
    if not history:
        return None
    nr = fn._sequence_nr()
    k = bisect.bisect_right(_CALLS.starts, nr) - 1
    if k < 0:
        return None
    call = history[k]
    return call.owner(nr) if nr < call.end else None


class ModulePaths:
    """The module calls remembered when a graph was walked, to name nodes by sequence number
    later (the walk notes each node's number; history moves on with the next forward)."""

    __slots__ = ("_calls", "_starts")

    def __init__(self, calls: list[_Call], starts: list[int]) -> None:
        self._calls, self._starts = calls, starts

    def __bool__(self) -> bool:
        return bool(self._calls)

    def path_of(self, nr: int) -> str | None:
        """The innermost module whose forward created the node numbered ``nr``."""
        k = bisect.bisect_right(self._starts, nr) - 1
        if k < 0:
            return None
        call = self._calls[k]
        return call.owner(nr) if nr < call.end else None


def module_paths() -> ModulePaths:
    """This thread's remembered module calls, as of now."""
    return ModulePaths(list(_CALLS.history), list(_CALLS.starts))


def _pre(path: str, module: nn.Module, args: Any) -> None:
    _CALLS.stack.append((id(module), path, _peek()))


def _post(path: str, module: nn.Module, args: Any, output: Any) -> None:
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
        done, _CALLS.done = _CALLS.done, []
        _remember(start, end, done)


def _remember(start: int, end: int, calls: list[tuple[int, int, int, str]]) -> None:
    history, starts = _CALLS.history, _CALLS.starts
    while history and history[-1].end > start:  # the counter went back (another thread's?)
        history.pop()
        starts.pop()
    if len(history) == HISTORY:
        starts.pop(0)  # the deque drops its oldest call on append
    history.append(_Call(start, end, calls))
    starts.append(start)
