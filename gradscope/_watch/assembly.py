"""From what the hooks saw of one parameter in one pass to its :class:`GradRecord`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .keeping import Keep
from .passes import Entry
from .records import GradRecord

__all__ = ["arrived", "make_grad_record", "scaler_moved"]


def make_grad_record(
    name: str,
    param: torch.Tensor,
    entry: Entry,
    index: int,
    scale: float | None,
    aliases: tuple[str, ...],
    *,
    keep: Keep,
    copy: Callable[[str, torch.Tensor], torch.Tensor] | None,
    ddp: bool,
) -> tuple[GradRecord, torch.Tensor | None, torch.Tensor | None]:
    """The record, the tensor its statistics describe, and that tensor's norm if known.

    ``copy`` (``watch(copy=True)``) copies ``.grad``; without it ``after`` is ``.grad`` itself,
    remembered with its version so later in-place changes show.
    """
    live = param.grad
    record = GradRecord(
        name, index, param.shape, accumulated=entry.accumulated, loss_scale=scale, aliases=aliases
    )
    if not entry.accumulated or live is None:  # torch.autograd.grad: .grad is untouched
        if keep != "none":
            record._before = record._after = entry.before
            record._delta = entry.grad
            if entry.grad is not None:  # autograd.grad returned this very tensor
                record._source_version = entry.grad._version
        return record, entry.grad, None
    norm = entry.norm
    if norm is not None and entry.incoming != (live.data_ptr(), live._version):
        norm = None  # .grad is not the very gradient the hook measured (another hook?)
    if keep == "none":
        return record, live, norm
    if copy is not None:
        after = copy(name, live)
    else:
        after, record._source_version = live, live._version
    record._before, record._after = entry.before, after
    if ddp:  # .grad now holds the average over processes; entry.grad is the local one
        record._local = entry.grad
        record._delta = after if entry.before is None else after - entry.before
    else:  # with no .grad before the pass, .grad is exactly what the pass added
        record._delta = after if entry.before is None else entry.grad
    return record, after, norm


def arrived(entry: Entry, param: torch.Tensor) -> bool:
    """Whether a pass that raised got as far as writing this parameter's ``.grad``."""
    if not entry.accumulated:
        return True
    live = param.grad
    return not (live is entry.old and (live is None or live._version == entry.old_version))


def _states(scaler: Any) -> Any:
    return getattr(scaler, "_per_optimizer_states", None)


def scaler_moved(scaler: Any) -> Callable[[], bool]:
    """A check: has ``scaler`` unscaled ``.grad`` in place, stepped or updated since now?

    ``GradScaler.unscale_`` does not bump the gradients' version counter; its per-optimizer
    state says it ran (stage UNSCALED or STEPPED, or a fresh state dict after ``update()``).
    """
    token = _states(scaler)

    def moved() -> bool:
        states = _states(scaler)
        if states is not token:  # update() ran: a new per-optimizer state dict
            return True
        return any(getattr(s.get("stage"), "name", "READY") != "READY" for s in states.values())

    return moved
