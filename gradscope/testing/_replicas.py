"""``assert_replicas_in_sync``: every rank holds the same parameters (and buffers, gradients)."""

from __future__ import annotations

from torch import nn

from .._distributed.replicas import check_replicas
from ._common import Failure, fail, plural

__all__ = ["assert_replicas_in_sync"]


def assert_replicas_in_sync(
    model: nn.Module,
    *,
    buffers: bool = True,
    grads: bool = False,
    group: object = None,
    msg: str | None = None,
) -> None:
    """Every rank holds bitwise the same parameters (buffers, gradients) as rank 0.

    Collective, like :func:`gradscope.check_replicas`, whose report it raises: every rank
    raises the same message, naming each tensor, the ranks that differ and by how much.

    >>> import torch, gradscope.testing as gt
    >>> gt.assert_replicas_in_sync(torch.nn.Linear(2, 2))  # one process: in sync
    """
    __tracebackhide__ = True
    report = check_replicas(model, buffers=buffers, grads=grads, group=group)
    if report.ok:
        return
    failures = [Failure(f"{m.kind} {m.name}", None, m.detail()) for m in report.mismatches]
    raise fail(
        "assert_replicas_in_sync",
        f"{plural(len(report.mismatches), 'tensor')} of {report.checked} differ across "
        f"{report.world_size} ranks",
        failures,
        "a rank changed its model on its own (code under `if rank == 0`, a different seed "
        "before building the model, BatchNorm without SyncBatchNorm or DDP's "
        "broadcast_buffers, an optimizer step on one rank only); build the model from one "
        "seed, let DDP broadcast buffers, or convert with nn.SyncBatchNorm.convert_sync_batchnorm",
        msg,
    )
