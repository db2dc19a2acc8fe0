"""An FSDP2 gradient: this rank's shard, and the whole gradient's statistics from every rank's.

FSDP2 keeps one shard (rows along dim 0) of each gradient per rank, as a DTensor. The whole
gradient's squared norm is the sum of the shards' squared norms and its NaN/Inf counts are sums,
so one ``all_gather`` of a small ``(parameters, 3)`` float64 table per backward pass gives every
rank the statistics of the gradients the optimizer will use, and each rank's own, at once.

>>> rows = [[(3.0, 0, 0, 6)], [(4.0, 1, 0, 4)]]  # per rank, per parameter
>>> combine(rows)  # the whole gradient: (norm, nan, inf, numel)
[(5.0, 1, 0, 10)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Row", "combine", "gather_rows", "local_shard"]

Row = tuple[float, int, int, int]  # (norm, nan, inf, numel) of one shard


def local_shard(grad: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 (DTensor) gradient, as the plain tensor FSDP holds."""
    local = getattr(grad, "_local_tensor", None)
    return grad if local is None else local


def gather_rows(rows: Sequence[Row], device: torch.device, group: Any) -> list[list[Row]]:
    """Every rank's ``(norm, nan, inf, numel)`` rows: one all_gather (all ranks must call it).

    Norms travel squared in float64, so the whole gradient's norm is exact to rounding.
    """
    table = torch.tensor(
        [(norm * norm, float(nan), float(inf), float(numel)) for norm, nan, inf, numel in rows],
        dtype=torch.float64,
        device=device,
    ).reshape(len(rows), 4)
    size = dist.get_world_size(group)
    gathered = [torch.empty_like(table) for _ in range(size)]
    dist.all_gather(gathered, table, group=group)
    return [
        [(math.sqrt(sq), int(nan), int(inf), int(n)) for sq, nan, inf, n in part.tolist()]
        for part in gathered
    ]


def combine(per_rank: Sequence[Sequence[Row]]) -> list[Row]:
    """The whole gradients' ``(norm, nan, inf, numel)`` from every rank's rows for its shards."""
    whole: list[Row] = []
    for column in zip(*per_rank, strict=True):
        squares = math.fsum(row[0] * row[0] for row in column)
        nan, inf, numel = (sum(row[i] for row in column) for i in (1, 2, 3))
        whole.append((math.sqrt(squares), nan, inf, numel))
    return whole
