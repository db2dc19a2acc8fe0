"""When a backward pass starts and ends, as the recorder sees it.

A pass starts with the first parameter hook that fires and ends with one callback queued with the
autograd engine (``Variable._execution_engine.queue_callback``), which runs when the engine has
finished the whole ``backward()`` call:

- it re-queues itself once, so it runs after every callback queued during the pass, such as
  DistributedDataParallel's, which writes the averaged gradients;
- a backward pass run *inside* another one (reentrant activation checkpointing runs one per
  checkpointed segment, from the segment's backward node) ends first; its callback then sees
  the outer node still running (``torch._C._current_autograd_node()``) and moves itself to the
  outer pass, through a hook on that node: one ``backward()`` call is one record;
- when ``backward()`` raises, the engine drops its callbacks unrun. The pass holds its callback
  only through a weak reference, so the recorder can tell the pass died and end it as failed
  the next time it looks (next hook, next forward, next read).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.autograd import Variable
from torch.utils.hooks import RemovableHandle

__all__ = ["Entry", "Pass", "accumulate_node", "take_accumulated"]


def accumulate_node(param: torch.Tensor) -> Any:
    """The AccumulateGrad node that writes ``param.grad`` (kept alive, it stays the same one)."""
    return param.view_as(param).grad_fn.next_functions[0][0]  # type: ignore[union-attr]


@dataclass(slots=True)
class Entry:
    """What the hooks saw of one parameter during the pass in progress."""

    grad: torch.Tensor | None  # the incoming gradient (what this pass adds), if held
    before: torch.Tensor | None
    # False under torch.autograd.grad, which leaves .grad alone; FSDP2 shards take the default
    accumulated: bool = True  # pragma: no mutate (only FSDP2 shards take it, and never read it)
    old: torch.Tensor | None = None  # .grad when the gradient arrived, and its version
    old_version: int = 0  # pragma: no mutate (unread where old is None, see arrived)
    incoming: tuple[int, int] | None = None  # (data_ptr, version) of a gradient torch may steal
    norm: torch.Tensor | None = None  # its norm, taken while it was hot in cache
    shard: torch.Tensor | None = None  # FSDP2: the sharded parameter its hook ran on


def take_accumulated(node: Any, entry: Entry) -> None:
    """Make ``entry`` hold the gradient accumulator ``node`` adds into ``.grad`` this pass.

    The accumulator's pre-hooks run after every tensor hook, so this one-shot pre-hook sees the
    final gradient, whatever hooks were registered after the watch's.
    """
    handles: list[RemovableHandle] = []

    def final(grads: tuple[torch.Tensor, ...]) -> None:
        for handle in handles:
            handle.remove()
        grad = grads[0]
        if entry.grad is not None:
            entry.grad = grad.detach().clone() if grad.requires_grad else grad
        entry.norm = None

    handles.append(node.register_prehook(final))


def _current_node() -> Any:
    """The autograd node being run on this thread (an outer one while its callbacks run)."""
    current = getattr(torch._C, "_current_autograd_node", None)  # pragma: no mutate
    # (a fallback for a torch without it, older than the one in use)
    return current() if current is not None else None  # pragma: no mutate (the same fallback)


class _EndOfPass:
    """The engine callback that ends one pass; see the module docstring."""

    __slots__ = ("__weakref__", "_finish", "_handle", "_requeued")

    def __init__(self, finish: Callable[[], None]) -> None:
        self._finish = finish
        self._requeued = False  # pragma: no mutate (None reads as False; True is tested)
        self._handle: RemovableHandle | None = None

    def __call__(self) -> None:
        if not self._requeued:  # run again after the callbacks queued during the pass
            self._requeued = True
            Variable._execution_engine.queue_callback(self)
            return
        self._requeued = False  # pragma: no mutate (None reads as False; True is tested)
        outer = _current_node()
        if outer is not None:  # a nested backward inside a node of an outer one
            self._handle = outer.register_hook(self._outer_node_done)
            return
        self._finish()

    def _outer_node_done(self, *_: Any) -> None:
        if self._handle is not None:
            self._handle.remove()  # torch calls a copy of the node's hooks: safe here
            self._handle = None  # pragma: no mutate (next set, or never read: see cancel)
        Variable._execution_engine.queue_callback(self)  # now in the outer pass

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None  # pragma: no mutate (a pass is cancelled once: never read)


# Until ``schedule()``: a reference whose callback is already gone.
_DEAD: weakref.ref[_EndOfPass] = weakref.ref(_EndOfPass(lambda: None))


@dataclass(slots=True)
class Pass:
    """One backward pass in progress (recorded or skipped by ``every=``)."""

    index: int
    recording: bool
    entries: dict[str, Entry] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    # The end-of-pass callback, held weakly: only the engine holds it, so this returns None once
    # the backward pass raised and the engine dropped it unrun.
    end: weakref.ref[_EndOfPass] = _DEAD

    def schedule(self, finish: Callable[[], None]) -> None:
        """Queue ``finish`` to run when the engine finishes this ``backward()`` call."""
        end = _EndOfPass(finish)
        self.end = weakref.ref(end)
        Variable._execution_engine.queue_callback(end)

    def cancel(self) -> None:
        """Remove what a pass that will not end normally left on an outer node."""
        end = self.end()
        if end is not None:
            end.cancel()
