"""Recording an FSDP2 (``fully_shard``) model: the pieces the recorder calls for DTensor params.

FSDP2 runs forward and backward on unsharded copies of the parameters, reduce-scatters each
gradient and writes this rank's shard into the sharded parameter's ``.grad`` (a DTensor):
tensor hooks on the sharded parameters never fire, post-accumulate-grad hooks do, once the
shard is in ``.grad``. So for these parameters the recorder

- registers a post-accumulate-grad hook (:func:`register`) and reads the shard there;
- takes ``before`` when forward starts (:func:`snapshot_befores`): FSDP2 adds into the old
  shard in place before the hook runs;
- starts the pass from a hook on the model's output (:func:`hook_output`), so a pass under
  ``set_requires_gradient_sync(False)``, where FSDP2 writes no ``.grad``, is recorded too;
- when the pass ends, combines each rank's shard statistics into the whole gradient's with one
  all_gather (:func:`combine_across_ranks`, collective: every rank ends every pass).

``after``, ``before`` and ``delta`` are this rank's shards as plain tensors (the DTensor's local
tensor), rows ``[start, stop)`` of dim 0 of the parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_leaves
from torch.utils.hooks import RemovableHandle

from .._distributed.layout import Layout
from .._distributed.shards import Row, combine, gather_rows, local_shard
from .keeping import Keep
from .passes import Entry
from .records import GradRecord
from .stats import GradStats

__all__ = [
    "assemble_sharded",
    "combine_across_ranks",
    "hook_output",
    "make_sharded_record",
    "register",
]


def register(param: torch.Tensor, hook: Callable[[torch.Tensor], None]) -> RemovableHandle:
    """A hook run with the parameter once FSDP2 has written its gradient shard."""
    handle: RemovableHandle = param.register_post_accumulate_grad_hook(hook)  # type: ignore[no-untyped-call]
    return handle


def hook_output(output: Any, hook: Callable[[torch.Tensor], None]) -> None:
    """Run ``hook`` when backward reaches the first output tensor that requires grad."""
    for leaf in tree_leaves(output):
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            leaf.register_hook(hook)  # type: ignore[no-untyped-call]
            return


def make_sharded_record(
    name: str,
    param: torch.Tensor,
    entry: Entry,
    index: int,
    slot: int,
    scale: float | None,
    aliases: tuple[str, ...],
    *,
    keep: Keep,
    copy: Callable[[str, torch.Tensor], torch.Tensor] | None,
) -> tuple[GradRecord, torch.Tensor | None, bool]:
    """The record of one FSDP2 parameter, the shard its local statistics describe, and whether
    the record's ``after`` is that live shard (FSDP2 adds into it next time: copy-on-write)."""
    grad = param.grad
    if grad is None or keep == "none":
        record = GradRecord.from_pass(
            name, index, param.shape, slot, loss_scale=scale, aliases=aliases
        )
        return record, None if grad is None else local_shard(grad), False
    live = local_shard(grad)  # the very tensor FSDP2 adds into next time (copy-on-write)
    before = entry.before
    after = live if copy is None else copy(name, live)
    record = GradRecord.from_pass(
        name,
        index,
        param.shape,
        slot,
        loss_scale=scale,
        aliases=aliases,
        before=before,
        after=after,
        delta=after if before is None else after - before,
        source_version=live._version if copy is None else None,
    )
    return record, after, copy is None


def assemble_sharded(
    entries: Mapping[str, Entry],
    params: Mapping[str, torch.Tensor],
    aliases: Mapping[str, tuple[str, ...]],
    index: int,
    scale: float | None,
    keep: Keep,
    copy: Callable[[str, torch.Tensor], torch.Tensor] | None,
    live_records: dict[str, GradRecord],
) -> tuple[dict[str, GradRecord], list[torch.Tensor], list[torch.Tensor | None]]:
    """``assembly.assemble`` for FSDP2 parameters: the records, their shards, no known norms.

    A failed pass keeps every entry: the hook runs only once the shard is in ``.grad``. Each
    record reads the sharded parameter its hook ran on: a failed pass is ended by the next
    backward, when FSDP2 may have put unsharded parameters, without ``.grad``, on the modules.
    """
    records: dict[str, GradRecord] = {}
    sources: list[torch.Tensor] = []
    for name, entry in entries.items():
        if name not in params:  # no longer watched
            continue
        param = entry.shard if entry.shard is not None else params[name]
        record, source, live = make_sharded_record(
            name, param, entry, index, len(sources), scale, aliases[name], keep=keep, copy=copy
        )
        if live:
            live_records[name] = record  # its after is the live shard (copy-on-write)
        records[name] = record
        sources.append(source if source is not None else torch.zeros(0))
    return records, sources, [None] * len(sources)


def combine_across_ranks(
    records: list[GradRecord], sources: list[torch.Tensor], layout: Layout
) -> None:
    """Give each record the whole gradient's statistics (one all_gather; collective)."""
    if not records:
        return
    rows: list[Row] = []
    for record, source in zip(records, sources, strict=True):
        norm, nan, inf = record.recorded_raw()
        rows.append((norm, nan, inf, source.numel()))
    per_rank = gather_rows(rows, sources[0].device, layout.group)
    whole = combine(per_rank)
    for slot, record in enumerate(records):
        ranks = [
            GradStats(numel=part[slot][3], norm=part[slot][0], nan=part[slot][1], inf=part[slot][2])
            for part in per_rank
        ]
        norm, nan, inf, numel = whole[slot]
        record.set_across_ranks(GradStats(numel=numel, norm=norm, nan=nan, inf=inf), ranks)
