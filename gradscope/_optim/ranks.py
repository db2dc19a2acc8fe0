"""One verdict on every rank: a step check under FSDP2 fails everywhere when it fails anywhere.

Under FSDP2 each rank checks the update of its own shards (the references run on local
tensors), so a bug that hits one shard shows on one rank only. When the checked optimizer holds
DTensor parameters and torch.distributed is running, every rank sends the names of its failed
parameters and its step-wide problems with one ``all_gather_object`` (so the check is
collective there: every rank must run it), and each report lists the other ranks' failures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from .._distributed.layout import is_sharded
from .step_report import StepReport

__all__ = ["agree_across_ranks"]


def _sharded(optimizers: Sequence[torch.optim.Optimizer]) -> bool:
    return any(
        is_sharded(p) for opt in optimizers for group in opt.param_groups for p in group["params"]
    )


def agree_across_ranks(report: StepReport, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Add every other rank's failures to ``report`` (collective under FSDP2; else nothing)."""
    if not (dist.is_available() and dist.is_initialized() and _sharded(optimizers)):
        return
    rank = dist.get_rank()
    mine = (rank, [p.name for p in report.params if p.failed], list(report.problems))
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    report.notes.append(
        f"FSDP2: rank {rank} checked its own shards; the other ranks' verdicts are merged here"
    )
    for entry in gathered:
        assert isinstance(entry, tuple)
        other: int = entry[0]
        failed: list[str] = entry[1]
        problems: list[str] = entry[2]
        if other == rank or not (failed or problems):
            continue
        what = f"parameters {', '.join(failed)}" if failed else problems[0]
        report.problems.append(f"rank {other} failed this step: {what}")
