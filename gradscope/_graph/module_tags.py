"""Which module created each autograd node, without touching a node during the forward pass.

Every autograd node gets a sequence number from a per-thread counter when it is created
(``torch._C._autograd._get_sequence_nr()`` peeks at it for ~30 ns). A forward pre-hook notes the
counter, the forward hook notes it again: the nodes a module call created are exactly those
numbered in between. Nested calls give nested ranges, so the innermost module owns a node. The
ranges of the latest outermost calls are kept per thread; :func:`module_path_of` answers for a
node when a graph is walked. Nothing is walked or written while the model runs, so the forward
pass pays for the hook calls only.

Other per-module hooks (the watch's forward checks) run inside the tagging hooks through
:func:`share_hooks`: each hook on a module costs a turn of torch's hook loop per call, so one
pair per module is cheaper than two. Each user removes its own part; the pair goes when neither
is left.

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
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._hooks import CopySafe

__all__ = [
    "ModulePaths",
    "PostHook",
    "PreHook",
    "install_module_tagging",
    "module_path_of",
    "module_paths",
    "share_hooks",
]

PreHook = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]  # with kwargs
PostHook = Callable[[nn.Module, tuple[Any, ...], Any], None]  # always called

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


class _Shared:
    """One module's pair of hooks, and who uses it: tagging (while ``tagging``) and the hooks
    run inside (``pre``/``post``). Torch calls the cheapest pair of functions for that: tagging
    alone, tagging and the inner hooks, or the inner hooks themselves."""

    __slots__ = ("handles", "key", "path", "post", "pre", "tagging")

    def __init__(
        self,
        module: nn.Module,
        path: str,
        tagging: bool,
        pre: PreHook | None = None,
        post: PostHook | None = None,
    ) -> None:
        self.key, self.path, self.tagging = id(module), path, tagging
        self.pre, self.post = pre, post
        hooks = self._hooks()
        assert hooks is not None
        self.handles = (
            module.register_forward_pre_hook(hooks[0], with_kwargs=True),
            module.register_forward_hook(hooks[1], always_call=True),
        )

    def _hooks(self) -> tuple[PreHook, PostHook] | None:
        # CopySafe: a deepcopy or pickle of the model carries inert hooks instead of these
        if self.tagging and self.pre is None:
            return CopySafe(_tag_pre, self), CopySafe(_tag_post, self)
        if self.tagging:
            return CopySafe(_both_pre, self), CopySafe(_both_post, self)
        if self.pre is not None and self.post is not None:
            return self.pre, self.post
        return None

    def update(self) -> None:
        """Put the functions for the current users in place (keeping the hooks' order), or
        remove the hooks when nobody uses them any more."""
        hooks = self._hooks()
        for k, handle in enumerate(self.handles):
            if hooks is None:
                handle.remove()
                continue
            table = handle.hooks_dict_ref()
            if table is not None and handle.id in table:
                table[handle.id] = hooks[k]


class _Part(RemovableHandle):
    """The handle of one user of a :class:`_Shared` pair: tagging, or the hooks inside."""

    def __init__(self, shared: _Shared, tagging: bool) -> None:
        super().__init__(OrderedDict())  # a handle of its own kind: remove() is all it does
        self._shared, self._tagging = shared, tagging

    def remove(self) -> None:
        shared = self._shared
        if self._tagging:
            shared.tagging = False
        else:
            shared.pre = shared.post = None
        shared.update()


def install_module_tagging(root: nn.Module) -> list[RemovableHandle]:
    """Hook every submodule of ``root`` (itself included, path ``""``); return the handles."""
    return [_Part(_Shared(module, path, True), True) for path, module in root.named_modules()]


def share_hooks(module: nn.Module, pre: PreHook, post: PostHook) -> RemovableHandle:
    """Run ``pre`` (a forward pre-hook with kwargs) and ``post`` (an always-called forward hook)
    inside ``module``'s newest tagging hooks that run nothing else yet, or register them as
    they are when there are none (make them :class:`~gradscope._hooks.CopySafe`).

    >>> import torch
    >>> from torch import nn
    >>> net, seen = nn.Linear(2, 2), []
    >>> tags = install_module_tagging(net)
    >>> inner = share_hooks(net, lambda m, a, kw: seen.append("pre"),
    ...                     lambda m, a, out: seen.append("post"))
    >>> _ = net(torch.ones(1, 2))
    >>> seen, len(net._forward_pre_hooks), len(net._forward_hooks)
    (['pre', 'post'], 1, 1)
    >>> for handle in (*tags, inner):
    ...     handle.remove()
    >>> len(net._forward_pre_hooks), len(net._forward_hooks)
    (0, 0)
    """
    for hook in reversed(module._forward_pre_hooks.values()):
        if isinstance(hook, CopySafe) and hook.func is _tag_pre:
            shared: _Shared = hook.args[0]
            shared.pre, shared.post = pre, post
            shared.update()
            return _Part(shared, False)
    return _Part(_Shared(module, "", False, pre, post), False)


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


def _tag_pre(shared: _Shared, module: nn.Module, args: Any, kwargs: Any) -> None:
    _CALLS.stack.append((shared.key, shared.path, _peek()))


def _tag_post(shared: _Shared, module: nn.Module, args: Any, output: Any) -> None:
    calls = _CALLS.stack
    key = shared.key
    # pop to our own entry even if an inner forward raised and skipped its hook
    while calls and calls[-1][0] != key:
        calls.pop()
    if not calls:
        return
    _, _, start = calls.pop()
    end = _peek()
    if end == start:
        return  # no node created (no_grad, inference mode, or no differentiable input)
    _CALLS.done.append((start, end, len(calls), shared.path))
    if not calls:
        done, _CALLS.done = _CALLS.done, []
        _remember(start, end, done)


def _both_pre(shared: _Shared, module: nn.Module, args: Any, kwargs: Any) -> None:
    _CALLS.stack.append((shared.key, shared.path, _peek()))
    shared.pre(module, args, kwargs)  # type: ignore[misc]


def _both_post(shared: _Shared, module: nn.Module, args: Any, output: Any) -> None:
    _tag_post(shared, module, args, output)
    shared.post(module, args, output)  # type: ignore[misc]


def _remember(start: int, end: int, calls: list[tuple[int, int, int, str]]) -> None:
    history, starts = _CALLS.history, _CALLS.starts
    while history and history[-1].end > start:  # the counter went back (another thread's?)
        history.pop()
        starts.pop()
    if len(history) == HISTORY:
        starts.pop(0)  # the deque drops its oldest call on append
    history.append(_Call(start, end, calls))
    starts.append(start)
