"""A HostCopy with a fake event: the deferred read path (as on a CUDA device) on the CPU."""

from __future__ import annotations

import torch


class FakeEvent:
    """Stands in for a CUDA event: counts how often the read waited on it."""

    def __init__(self) -> None:
        self.waits = 0

    def synchronize(self) -> None:
        self.waits += 1


class CopyLater:
    """A HostCopy that behaves as on a CUDA device: results are only read when waited for."""

    deferred = True

    def __init__(self) -> None:
        self.events: list[FakeEvent] = []

    def __call__(self, values: torch.Tensor) -> tuple[torch.Tensor, FakeEvent]:
        event = FakeEvent()
        self.events.append(event)
        return values.clone(), event
