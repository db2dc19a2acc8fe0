"""The forward checks' module hooks: what :class:`~.forward.ForwardMonitor` runs on every module
call, before and after it.

They hold the monitor weakly, and their errors go to its ``errors`` (the watch's list), never
into the user's forward pass. They keep the monitor's hook state (``stack``, ``live_pass``,
``replaying``, ``armed_mode``) and call its ``begin``, ``check``, ``check_all`` and
``finish``. The monitor registers them as CopySafe hooks (see :mod:`gradscope._hooks`: a
deepcopy, pickle or ``torch.save`` of the watched model carries inert hooks, not these), inside
the module-tagging hooks where there are some (:func:`gradscope._graph.module_tags.share_hooks`).
They run on every module call, so the common case (one tensor in, one tensor out) is written out
here, in one frame per hook.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .forward_pass import IN, OUT, floating_tensors

if TYPE_CHECKING:
    from .forward import ForwardMonitor

__all__ = ["post_hook", "pre_hook"]

_Tensor = torch.Tensor
_is_grad_enabled = torch.is_grad_enabled


def pre_hook(
    ref: weakref.ref[ForwardMonitor],
    k: int,
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    monitor = ref()
    if monitor is None:
        return
    try:
        stack = monitor.stack
        if monitor.replaying:
            stack.append(k)
            return
        live = monitor.live_pass
        if live is None or not stack:
            live = monitor.begin(k, args, kwargs)
            owner = -1
        else:
            owner = stack[-1]
        stack.append(k)
        live.called.append(k)
        if not _is_grad_enabled():
            live.no_grad.append(k)
        if len(args) == 1 and isinstance(args[0], _Tensor):
            monitor.check(live, args[0], owner, k, IN)
        elif args:
            monitor.check_all(live, args, owner, k, IN)
        if kwargs:
            monitor.check_all(live, kwargs, owner, k, IN)
    except Exception as error:  # never break the user's forward; surfaced via watch.errors
        monitor.errors.append(error)


def post_hook(
    ref: weakref.ref[ForwardMonitor], k: int, module: nn.Module, args: tuple[Any, ...], output: Any
) -> None:
    monitor = ref()
    if monitor is None:
        return
    try:
        stack = monitor.stack
        if not stack:
            return
        if stack[-1] != k:
            if k not in stack:
                return
            while stack[-1] != k:  # an inner call raised and skipped its hook
                stack.pop()
        live = monitor.live_pass
        if monitor.replaying or live is None:
            if monitor.replaying:
                monitor.replay_outputs.extend(
                    t for t in floating_tensors(output) if t.requires_grad
                )
            stack.pop()
            return
        if isinstance(output, _Tensor):
            monitor.check(live, output, k, k, OUT)
        else:
            monitor.check_all(live, output, k, k, OUT)
        mode = monitor.armed_mode
        if mode is not None:
            mode.left(k, output, outermost=len(stack) == 1)
        stack.pop()
        if not stack:
            monitor.finish(live, output)
    except Exception as error:  # never break the user's forward; surfaced via watch.errors
        monitor.errors.append(error)
