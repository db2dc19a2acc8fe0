"""From what the hooks saw of each parameter in one pass to its :class:`GradRecord`.

:func:`assemble` runs once per pass over every parameter that received a gradient, so its
common case (``.grad`` was None and the pass stole the incoming gradient into it) is inlined;
everything else goes through :func:`make_grad_record`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .keeping import Keep
from .passes import Entry
from .records import GradRecord

__all__ = ["arrived", "assemble", "loss_scale", "make_grad_record", "scaler_moved"]

Copy = Callable[[str, torch.Tensor], torch.Tensor]


def assemble(
    entries: Mapping[str, Entry],
    params: Mapping[str, torch.Tensor],
    aliases: Mapping[str, tuple[str, ...]],
    index: int,
    scale: float | None,
    failed: bool,
    keep: Keep,
    copy: Copy | None,
    ddp: bool,
    live_records: dict[str, GradRecord],
) -> tuple[dict[str, GradRecord], list[torch.Tensor], list[torch.Tensor | None]]:
    """The records of one pass, the tensors their statistics describe and norms already taken.

    A record's slot is its place in those lists. ``live_records`` gets, by name, each record
    whose ``after`` is ``.grad`` itself (the copy-on-write list of the recorder).
    """
    records: dict[str, GradRecord] = {}
    sources: list[torch.Tensor] = []
    known: list[torch.Tensor | None] = []
    simple = keep != "none" and copy is None and not ddp
    from_pass = GradRecord.from_pass
    for name, entry in entries.items():
        param = params.get(name)
        if param is None or (failed and not arrived(entry, param)):
            continue
        live = param.grad
        if simple and entry.incoming is not None and entry.before is None and live is not None:
            # .grad was None: the pass stored its gradient there, so after == delta == .grad
            version = live._version
            record = from_pass(
                name,
                index,
                param.shape,
                len(sources),
                loss_scale=scale,
                aliases=aliases[name],
                after=live,
                delta=live,
                source_version=version,
            )
            norm = entry.norm
            if norm is not None and entry.incoming != (live.data_ptr(), version):
                norm = None  # .grad is not the very gradient the hook measured (another hook?)
            source: torch.Tensor | None = live
            live_records[name] = record
        else:
            record, source, norm, shares = make_grad_record(
                name, param, entry, index, len(sources), scale, aliases[name], keep, copy, ddp
            )
            if shares:
                live_records[name] = record
        records[name] = record
        sources.append(source if source is not None else torch.zeros(0))
        known.append(norm)
    return records, sources, known


def make_grad_record(
    name: str,
    param: torch.Tensor,
    entry: Entry,
    index: int,
    slot: int,
    scale: float | None,
    aliases: tuple[str, ...],
    keep: Keep,
    copy: Copy | None,
    ddp: bool,
) -> tuple[GradRecord, torch.Tensor | None, torch.Tensor | None, bool]:
    """The record, the tensor its statistics describe, that tensor's norm if known, and
    whether the record holds ``.grad`` itself (to be copied before the next pass adds into it).

    ``copy`` (``watch(copy=True)``) copies ``.grad``; without it ``after`` is ``.grad`` itself,
    remembered with its version so later in-place changes show.
    """
    live = param.grad
    accumulated = entry.accumulated
    if not accumulated or live is None:  # torch.autograd.grad: .grad is untouched
        grad = entry.grad  # autograd.grad returned this very tensor: its version now
        after, source = entry.before, grad
        if accumulated and grad is not None:  # .grad was written, then cleared by a
            # post-accumulate hook (optimizer in backward): it held before + grad
            after = source = grad if after is None else after + grad
        kept: dict[str, Any] = {}
        if keep != "none":
            kept = {
                "before": entry.before,
                "after": after,
                "delta": grad,
                "source_version": None if grad is None else grad._version,
            }
        record = GradRecord.from_pass(
            name,
            index,
            param.shape,
            slot,
            accumulated=accumulated,
            loss_scale=scale,
            aliases=aliases,
            **kept,
        )
        # never .grad itself (before and after are the copy taken before the pass): not shared
        shares = False  # pragma: no mutate (listed, it would be skipped: its after is not .grad)
        return record, source, None, shares
    norm = entry.norm
    if norm is not None and entry.incoming != (live.data_ptr(), live._version):
        norm = None  # .grad is not the very gradient the hook measured (another hook?)
    if keep == "none":
        record = GradRecord.from_pass(
            name, index, param.shape, slot, loss_scale=scale, aliases=aliases
        )
        shares = False  # pragma: no mutate (listed, it would be skipped: it holds no tensor)
        return record, live, norm, shares
    before = entry.before
    if copy is not None:
        after, version = copy(name, live), None
    else:
        after, version = live, live._version
    local = None
    delta: torch.Tensor | None
    if ddp:  # .grad now holds the average over processes; entry.grad is the local one
        local = entry.grad
        delta = after if before is None else after - before
    else:  # with no .grad before the pass, .grad is exactly what the pass added
        delta = after if before is None else entry.grad
    record = GradRecord.from_pass(
        name,
        index,
        param.shape,
        slot,
        loss_scale=scale,
        aliases=aliases,
        before=before,
        after=after,
        delta=delta,
        local=local,
        source_version=version,
    )
    return record, after, norm, version is not None


def arrived(entry: Entry, param: torch.Tensor) -> bool:
    """Whether a pass that raised got as far as writing this parameter's ``.grad``."""
    if not entry.accumulated:
        return True
    live = param.grad
    return not (live is entry.old and (live is None or live._version == entry.old_version))


def loss_scale(scaler: Any) -> float | None:
    """The GradScaler's current scale; None without a scaler or with a disabled one."""
    if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
        return None
    return float(scaler.get_scale())


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
        if states is None:  # not a torch GradScaler: only the version and norm checks apply
            return False
        # GradScaler's entries start READY (_check_inf_per_device makes one and leaves it so)
        return any(s["stage"].name != "READY" for s in states.values())

    return moved
