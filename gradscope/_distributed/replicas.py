"""Do the ranks still hold the same model? Compare parameters, buffers and gradients.

Data-parallel replicas (DDP, or any loop that averages gradients itself) must stay bitwise
equal; they drift apart silently when one rank changes a parameter on its own, when BatchNorm
running statistics are not synchronised, or when ranks initialise with different seeds.
:func:`check_replicas` finds that with one cheap gather of per-tensor checksums (integer sums
over the tensors' bits, computed where the tensors live) and then compares exactly, tensor by
tensor, only the ones whose checksums differ.

>>> from torch import nn
>>> check_replicas(nn.Linear(2, 2)).ok  # one process: trivially in sync
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .._errors import GradscopeError
from .._naming import describe, unwrap_module
from .layout import is_sharded, world

__all__ = ["ReplicaMismatch", "ReplicaReport", "check_replicas"]

_WEIGHTS = 1_000_003  # position weights cycle with this prime period


@dataclass(frozen=True)
class ReplicaMismatch:
    """One tensor that differs across ranks.

    ``ranks`` are the ranks whose value differs from rank 0's; ``max_abs_diff`` and
    ``max_rel_diff`` give, per such rank, the largest difference to rank 0's value (NaN where
    the shapes differ or a rank has no tensor, described in ``problem``).
    """

    name: str
    kind: str  # "parameter", "buffer" or "gradient"
    ranks: list[int]
    max_abs_diff: dict[int, float]
    max_rel_diff: dict[int, float]
    problem: str = ""

    def detail(self) -> str:
        """What differs, in words: the ranks and their largest differences to rank 0."""
        if self.problem:
            return self.problem
        return "differs from rank 0 on " + ", ".join(
            f"rank {r} (max |diff| {self.max_abs_diff[r]:.4g}, relative {self.max_rel_diff[r]:.3g})"
            for r in self.ranks
        )

    def line(self) -> str:
        """One line of a report: the kind of tensor, its name and :meth:`detail`."""
        return f"  {self.kind} {self.name}: {self.detail()}"


@dataclass
class ReplicaReport:
    """What :func:`check_replicas` found: the same on every rank."""

    world_size: int
    checked: int
    mismatches: list[ReplicaMismatch] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # FSDP2 shards: not replicas

    @property
    def ok(self) -> bool:
        """True when every compared tensor is equal on every rank."""
        return not self.mismatches

    def __str__(self) -> str:
        head = (
            f"replicas in sync: {self.checked} tensors equal on {self.world_size} ranks"
            if self.ok
            else f"replicas out of sync: {len(self.mismatches)} of {self.checked} tensors "
            f"differ across {self.world_size} ranks"
        )
        lines = [head, *(m.line() for m in self.mismatches)]
        if self.skipped:
            lines.append(f"  ({len(self.skipped)} sharded FSDP2 parameters are not replicas)")
        return "\n".join(lines)


def _named(
    module: nn.Module, buffers: bool, grads: bool
) -> Iterator[tuple[str, str, torch.Tensor | None]]:
    root = unwrap_module(module)
    params = list(root.named_parameters())
    for name, param in params:
        yield name, "parameter", param
    if buffers:
        for name, buffer in root.named_buffers():
            yield name, "buffer", buffer
    if grads:
        for name, param in params:
            yield name, "gradient", param.grad


def _checksum(tensor: torch.Tensor) -> tuple[int, int, int]:
    """Two integer sums over the tensor's bits (plain and position-weighted), and its numel.

    Integer arithmetic wraps identically everywhere, so equal tensors give equal sums on every
    rank and device; a single flipped bit changes both.
    """
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    raw = flat.view(torch.uint8)
    words = raw.view(torch.int32) if raw.numel() % 4 == 0 else raw
    wide = words.to(torch.int64)
    weights = torch.arange(wide.numel(), device=wide.device, dtype=torch.int64) % _WEIGHTS + 1
    sums = torch.stack([wide.sum(), (wide * weights).sum()]).tolist()
    return int(sums[0]), int(sums[1]), tensor.numel()


def _differences(
    mine: torch.Tensor, name: str, group: object
) -> tuple[dict[int, float], dict[int, float]]:
    """Every rank's max |diff| to rank 0's value (one all_gather of this tensor; collective)."""
    size = dist.get_world_size(group)  # type: ignore[arg-type]
    values = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(values, mine.detach().contiguous(), group=group)  # type: ignore[arg-type]
    base = values[0].double() if not values[0].is_complex() else values[0]
    scale = base.abs().max().item() if base.numel() else 0.0
    absolute, relative = {}, {}
    for rank, value in enumerate(values[1:], start=1):
        other = value.double() if not value.is_complex() else value
        diff = (other - base).abs()
        unequal = ~((other == base) | (other.isnan() & base.isnan()))
        worst = diff[unequal].max().item() if bool(unequal.any()) else 0.0
        absolute[rank] = worst
        relative[rank] = worst / scale if scale else (math.inf if worst else 0.0)
    return absolute, relative


def check_replicas(
    model: nn.Module, *, buffers: bool = True, grads: bool = False, group: object = None
) -> ReplicaReport:
    """Compare every parameter (and buffer, and gradient) of ``model`` across ranks.

    Collective: every rank of ``group`` (default: all) must call it at the same point. One
    gather of per-tensor checksums finds the tensors that differ; only those are then
    gathered and compared exactly, naming the ranks that differ from rank 0 and by how much.
    Every rank gets the same report. FSDP2 (DTensor) parameters are shards, not replicas:
    they are skipped and listed in ``skipped``. On one process it returns an empty report.

    >>> import gradscope
    >>> report = gradscope.check_replicas(torch.nn.BatchNorm1d(3))
    >>> report.ok, report.checked
    (True, 5)
    """
    if not isinstance(model, nn.Module):
        raise GradscopeError(
            f"check_replicas() takes the model (an nn.Module), not {describe(model)}"
        )
    entries = []
    skipped = []
    for name, kind, tensor in _named(model, buffers, grads):
        if tensor is not None and is_sharded(tensor):
            skipped.append(name)
            continue
        entries.append((name, kind, tensor))
    _, size = world()
    if size == 1 or not dist.is_initialized():
        return ReplicaReport(world_size=1, checked=len(entries), skipped=skipped)
    sums = [
        (kind, name, None if tensor is None else _checksum(tensor))
        for name, kind, tensor in entries
    ]
    gathered: list[object] = [None] * dist.get_world_size(group)  # type: ignore[arg-type]
    dist.all_gather_object(gathered, sums, group=group)  # type: ignore[arg-type]
    tables: list[list[tuple[str, str, tuple[int, int, int] | None]]] = gathered  # type: ignore[assignment]
    names = [[(k, n) for k, n, _ in table] for table in tables]
    if any(n != names[0] for n in names):
        odd = [r for r, n in enumerate(names) if n != names[0]]
        raise GradscopeError(
            f"check_replicas(): ranks {odd} hold different tensors than rank 0 (different "
            f"parameter or buffer names, or grads=/buffers= differing across ranks); "
            f"every rank must pass the same model and options"
        )
    report = ReplicaReport(world_size=len(tables), checked=len(entries), skipped=skipped)
    for i, (name, kind, tensor) in enumerate(entries):
        column = [table[i][2] for table in tables]
        if all(c == column[0] for c in column):
            continue
        differing = [r for r, c in enumerate(column) if c != column[0]]
        missing = [r for r, c in enumerate(column) if c is None]
        numels = {c[2] for c in column if c is not None}
        if missing or len(numels) > 1:
            problem = (
                f"no {kind} on ranks {missing}"
                if missing
                else f"sizes differ across ranks ({sorted(numels)} elements)"
            )
            nan = {r: math.nan for r in differing}
            report.mismatches.append(
                ReplicaMismatch(name, kind, differing, nan, dict(nan), problem)
            )
            continue
        assert tensor is not None
        absolute, relative = _differences(tensor, name, group)
        differing = [r for r in differing if r != 0]
        report.mismatches.append(
            ReplicaMismatch(
                name,
                kind,
                differing,
                {r: absolute[r] for r in differing},
                {r: relative[r] for r in differing},
            )
        )
    return report
