"""Which gradient tensors the records keep, for how long, and the buffers of those let go.

``keep="last"`` keeps the newest pass's tensors only, ``keep="none"`` none, ``keep="all"`` every
pass's within ``max_bytes``: past it, the oldest passes let go of their tensors (their statistics
stay, and the record says ``dropped="max_bytes"``). Copies of dropped passes are reused as
buffers for later copies: fresh memory for every copy costs page faults that made copying 3x
slower than writing into a buffer of the previous pass (measured on CPU).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from itertools import repeat
from operator import attrgetter
from types import SimpleNamespace
from typing import Literal

import torch

from .records import BackwardRecord, GradRecord

__all__ = ["Keep", "Keeper", "default_max_bytes"]

Keep = Literal["last", "all", "none"]

_MIB = 1 << 20
_grad_of = attrgetter("grad")
_NO_PARAM = SimpleNamespace(grad=None)  # a parameter removed from the module


def default_max_bytes(params: Mapping[str, torch.Tensor]) -> int:
    """16 times the model's gradients (about eight passes of before and delta), at least 256 MiB."""
    grad_bytes = sum(p.numel() * p.element_size() for p in params.values())
    return max(16 * grad_bytes, 256 * _MIB)


class Keeper:
    """The copy buffers and the memory bound of one recorder."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pool: dict[str, list[torch.Tensor]] = {}
        self._dropped: BackwardRecord | None = None  # the newest record already emptied
        self._holding: deque[tuple[BackwardRecord, int]] = deque()  # keep="all": with bytes
        self._held_bytes = 0
        self.bound_reached = False

    def copy(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A detached copy of ``tensor``, written into a recycled buffer when one fits."""
        pool = self._pool.get(name)
        while pool:
            buffer = pool.pop()
            if (
                buffer.shape == tensor.shape
                and buffer.dtype == tensor.dtype
                and buffer.device == tensor.device
                and buffer.stride() == tensor.stride()
            ):
                return buffer.copy_(tensor.detach())
        return tensor.detach().clone()

    def forget(self, name: str) -> None:
        self._pool.pop(name, None)

    def clear(self) -> None:
        self._pool.clear()
        self._holding.clear()
        self._held_bytes = 0

    def recycle(self, record: BackwardRecord, params: Mapping[str, torch.Tensor]) -> None:
        """Drop the tensors of an older pass, keeping its own copies as buffers for later ones
        (of the parameters still watched: ``params``)."""
        if record is self._dropped:
            return
        self._dropped = record
        record.dropped = record.dropped or "keep"
        for name, tensors in record.drop_tensors().items():
            if not tensors or name not in params:  # nothing of ours, or removed since
                continue
            pool = self._pool.setdefault(name, [])
            for tensor in tensors:
                if tensor.layout == torch.strided and len(pool) < 2:
                    pool.append(tensor)

    def release_orphans(self, record: BackwardRecord, params: Mapping[str, torch.Tensor]) -> None:
        """Let go of the newest pass's tensors that are no longer any parameter's ``.grad``.

        After ``zero_grad()`` the watch would be their only holder; keeping them into the next
        forward and backward made the allocator hand out fresh pages there, which cost 8% of an
        MLP training step. Statistics recorded at the end of the pass stay.
        """
        if record is self._dropped:
            return
        grads = record.grads
        # Attribute reads and the per-record calls in C (map): this runs before every forward.
        lives = map(_grad_of, map(params.get, grads, repeat(_NO_PARAM)))
        kept = sum(map(GradRecord.drop_if_orphaned, grads.values(), lives))
        if not kept:
            self._dropped = record  # nothing left to drop or recycle
            record.dropped = "keep"

    def added(self, record: BackwardRecord, oldest: BackwardRecord | None) -> str | None:
        """Account for a new record under ``keep="all"``; ``oldest`` is about to leave history.

        Returns a note for the user the first time the bound is reached.
        """
        reached = self.bound_reached
        if oldest is not None and self._holding and self._holding[0][0] is oldest:
            self._held_bytes -= self._holding.popleft()[1]
        size = record.nbytes()
        self._holding.append((record, size))
        self._held_bytes += size
        while self._held_bytes > self.max_bytes and len(self._holding) > 1:
            old, old_size = self._holding.popleft()
            old.drop_tensors()
            old.dropped = "max_bytes"
            self._held_bytes -= old_size
            self.bound_reached = True
        if self.bound_reached and not reached:
            return (
                f'keep="all" reached max_bytes={self.max_bytes:,}: the oldest passes let go '
                f'of their tensors (their statistics stay; record.dropped == "max_bytes"); '
                f"raise max_bytes= or lower history= to keep more"
            )
        return None
