"""The end of a recorded backward pass: its records assembled, measured and made one record.

The recorder calls :func:`pass_record` once per recorded pass, when the pass ends (or is found
to have failed). Assembly builds a ``GradRecord`` per parameter (``assembly``, or ``sharded``
for FSDP2), a :class:`StatsReader` hands their gradients to a ``Reading`` (the norms and
NaN/Inf counts, read now on a CPU, later on CUDA), FSDP2's ranks combine their shards' numbers,
and the result is one :class:`BackwardRecord`. Keeping the records, notes and listeners stays
with the recorder.
"""

from __future__ import annotations

from typing import Any

import torch

from .._distributed.layout import Layout
from .assembly import Copy, assemble, scaler_moved
from .following import Followed
from .keeping import Keep
from .passes import Pass
from .reading import HostCopy, Reading, host_copy_for
from .records import BackwardRecord, GradRecord, attach_reading
from .sharded import assemble_sharded, combine_across_ranks

__all__ = ["StatsReader", "pass_record"]


class StatsReader:
    """Gives each pass's records their norms and NaN/Inf counts, with one pass in flight at most.

    Reading the norms back on a CUDA device would wait for the whole backward pass; instead
    they travel asynchronously and are read at the latest when the next pass ends, by which
    time they have long arrived.
    """

    def __init__(self) -> None:
        self._in_flight: Reading | None = None  # the newest pass's statistics, if still deferred
        # How results reach the host, per device (the seam tests replace: host_copy_for).
        self._copies: dict[torch.device, HostCopy] = {}

    def read(
        self,
        records: dict[str, GradRecord],
        sources: list[torch.Tensor],
        known: list[torch.Tensor | None],
        scale: float | None,
        scaler: Any,
    ) -> None:
        """Attach a ``Reading`` of ``sources`` (``known``: norms the hooks took) to ``records``."""
        self.wait()  # frees the host buffers for this pass's results
        hot = None if known.count(None) == len(known) else known  # pragma: no mutate
        # (a shortcut: Reading measures every None in ``known`` as it does without it)
        reading = Reading(sources, hot, copy_for=self._host_copy)
        self._in_flight = reading if reading.pending else None  # pragma: no mutate
        # (a Reading with nothing pending: its wait() does nothing)
        moved = None if scale is None else scaler_moved(scaler)  # pragma: no mutate
        # (no loss scale: no scaler, or a disabled one, which never unscales: it would say False)
        attach_reading(records.values(), reading, moved)

    def wait(self) -> None:
        """Read back the statistics still in flight, if any."""
        if self._in_flight is not None:
            self._in_flight.wait()
            self._in_flight = None

    def _host_copy(self, device: torch.device) -> HostCopy:
        copy = self._copies.get(device)
        if copy is None:
            copy = self._copies[device] = host_copy_for(device)
        return copy


def pass_record(
    current: Pass,
    failed: bool,
    followed: Followed,
    layout: Layout,
    *,
    scale: float | None,
    scaler: Any,
    keep: Keep,
    copy: Copy | None,
    live_records: dict[str, GradRecord],
    synchronised: bool | None,
    reader: StatsReader,
) -> BackwardRecord:
    """The record of pass ``current``, from its entries and the parameters as ``followed`` now.

    ``live_records`` is the recorder's copy-on-write list (each parameter's newest record whose
    ``after`` is ``.grad`` itself), updated here. Under FSDP2 a pass that did not fail ends with
    one collective, on every rank.
    """
    sharded = layout.kind == "fsdp2"
    params, index = followed.names.params, current.index
    if sharded:
        records, sources, known = assemble_sharded(
            current.entries, params, followed.aliases, index, scale, keep, copy, live_records
        )
    else:
        ddp = layout.kind == "ddp"
        records, sources, known = assemble(
            current.entries,
            params,
            followed.aliases,
            index,
            scale,
            failed,
            keep,
            copy,
            ddp,
            live_records,
        )
    reader.read(records, sources, known, scale, scaler)
    if sharded and not failed:  # every rank ends every pass here: one collective
        combine_across_ranks(list(records.values()), sources, layout)
    frozen = followed.frozen
    missing = (
        []
        if len(records) + len(frozen) == len(params)  # pragma: no mutate
        # (a shortcut: were it wrong, the list below is computed, and is [] then too)
        or (sharded and not synchronised)  # FSDP2 kept them unsharded, unseen
        else [n for n, p in params.items() if p.requires_grad and n not in records]
    )
    backward = BackwardRecord(
        index=index,
        grads=records,
        missing=missing,
        frozen=frozen,  # these four are replaced, never changed in place, by sync()
        aliases=followed.names.canonical,
        replaced=followed.replaced,
        shapes=followed.shapes,
        loss_scale=scale,
        errors=current.errors,
        failed=failed,
        synchronised=synchronised,
    )
    followed.replaced = []
    return backward
