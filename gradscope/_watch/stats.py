"""Gradient statistics: cheap ones batched on device per backward pass, the rest on demand.

Definitions (a numpy reference in the tests checks each one):

- ``norm`` is the L2 norm over every element, so a NaN anywhere makes it NaN and an Inf makes it
  Inf: it is the number ``clip_grad_norm_`` would see.
- ``mean``, ``std`` (population, ddof=0), ``min``, ``max`` and ``abs_max`` are over the *finite*
  elements only, so a single NaN does not hide what the rest of the gradient looks like; they are
  None when no element is finite.
- ``nan`` and ``inf`` count elements; ``zero_fraction`` is the share of elements exactly 0.

Low-precision tensors (float16, bfloat16) are reduced in float32; float64 stays float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "GradStats",
    "PendingNorms",
    "batched_norms",
    "cheap_stats",
    "full_stats",
    "nonfinite_counts",
    "norm_tensor",
]


@dataclass(frozen=True, slots=True)
class GradStats:
    """Statistics of one gradient tensor; fields that were not computed are None.

    >>> full_stats(torch.tensor([3.0, -4.0])).norm
    5.0
    """

    numel: int
    norm: float
    nan: int
    inf: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    abs_max: float | None = None
    zero_fraction: float | None = None

    @property
    def finite(self) -> bool:
        """True when the gradient holds no NaN and no Inf."""
        return self.nan == 0 and self.inf == 0

    def scaled(self, factor: float) -> GradStats:
        """These statistics for the tensor multiplied by ``factor`` (used to undo a loss scale)."""

        def mul(value: float | None) -> float | None:
            return None if value is None else value * factor

        low, high = mul(self.min), mul(self.max)
        if factor < 0 and low is not None and high is not None:
            low, high = high, low
        return GradStats(
            numel=self.numel,
            norm=self.norm * abs(factor),
            nan=self.nan,
            inf=self.inf,
            mean=mul(self.mean),
            std=None if self.std is None else self.std * abs(factor),
            min=low,
            max=high,
            abs_max=None if self.abs_max is None else self.abs_max * abs(factor),
            zero_fraction=self.zero_fraction,
        )


def _reduction_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def nonfinite_counts(tensor: torch.Tensor) -> tuple[int, int]:
    """(number of NaN elements, number of +-Inf elements)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0, 0
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    return nan, inf


def full_stats(tensor: torch.Tensor) -> GradStats:
    """Every statistic of ``tensor`` (several passes over its memory: use on demand)."""
    values = tensor.detach()
    if values.layout != torch.strided:
        values = values.to_dense()
    values = values.to(_reduction_dtype(values.dtype)).reshape(-1)
    numel = values.numel()
    if numel == 0:
        return GradStats(numel=0, norm=0.0, nan=0, inf=0, zero_fraction=0.0)
    nan, inf = nonfinite_counts(values)
    norm = float(torch.linalg.vector_norm(values, dtype=torch.float64))
    zero_fraction = float((values == 0).sum()) / numel
    finite = values if nan == 0 and inf == 0 else values[torch.isfinite(values)]
    if finite.numel() == 0:
        return GradStats(numel, norm, nan, inf, zero_fraction=zero_fraction)
    std, mean = torch.std_mean(finite, correction=0)
    low, high = torch.aminmax(finite)
    return GradStats(
        numel=numel,
        norm=norm,
        nan=nan,
        inf=inf,
        mean=float(mean),
        std=float(std),
        min=float(low),
        max=float(high),
        abs_max=max(abs(float(low)), abs(float(high))),
        zero_fraction=zero_fraction,
    )


_SAFE_NORM_LOW, _SAFE_NORM_HIGH = 1e-15, 1e15


def norm_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The L2 norm of ``tensor`` as a 0-d tensor on its device (no host transfer)."""
    norm: torch.Tensor = torch.linalg.vector_norm(
        tensor.detach(), dtype=_reduction_dtype(tensor.dtype)
    )
    return norm


class PendingNorms:
    """L2 norms of many tensors: one fused kernel and one host transfer per (device, dtype).

    The kernels are launched at once; the values are read on first use. On a CUDA device the copy
    to the host is asynchronous (pinned memory and an event), so recording never stalls the
    training loop: reading waits for these norms only, not for the work queued after them.
    ``known`` may hold norms already computed on device (0-d tensors) for some of the tensors.
    Calling ``.item()`` per tensor would synchronise once per parameter (2.3-2.6x a training step
    measured on CPU); ``_foreach_norm`` plus one transfer per pass costs a few percent.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        known: Sequence[torch.Tensor | None] | None = None,
        pinned: dict[tuple[int, torch.dtype], torch.Tensor] | None = None,
    ) -> None:
        self._tensors: list[torch.Tensor] | None = list(tensors)
        self._reads: list[tuple[list[int], torch.Tensor, Any]] = []
        self._values: list[float] | None = None
        if tensors and (known is None or not any(k is not None for k in known)):
            # The common case, kept short (it runs once per backward pass): one device, one
            # dtype, plain dense tensors.
            first = tensors[0]
            dtype, device = first.dtype, first.get_device()
            plain = not first.is_complex()
            detach = False
            for t in tensors:
                if (
                    t.dtype != dtype
                    or t.get_device() != device
                    or t.layout != torch.strided
                    or not t.numel()
                ):
                    plain = False
                    break
                detach = detach or t.requires_grad
            if plain:
                group = [t.detach() for t in tensors] if detach else list(tensors)
                fused = torch._foreach_norm(group, 2, dtype=_reduction_dtype(dtype))
                self._read_back(list(range(len(tensors))), torch.stack(fused), pinned)
                return
        results: list[torch.Tensor | None] = list(known) if known else [None] * len(tensors)
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, tensor in enumerate(tensors):
            if results[i] is not None:
                continue
            if tensor.layout != torch.strided or tensor.is_complex() or tensor.numel() == 0:
                results[i] = torch.linalg.vector_norm(tensor.detach().to_dense().abs().double())
                continue
            groups.setdefault((tensor.device, tensor.dtype), []).append(i)
        for (_, dtype), indices in groups.items():
            group = [tensors[i].detach() for i in indices]
            fused = torch._foreach_norm(group, 2, dtype=_reduction_dtype(dtype))
            for i, norm in zip(indices, fused, strict=True):
                results[i] = norm
        by_kind: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, result in enumerate(results):
            assert result is not None
            by_kind.setdefault((result.device, result.dtype), []).append(i)
        for indices in by_kind.values():
            self._read_back(indices, torch.stack([results[i] for i in indices]), pinned)  # type: ignore[misc]

    def _read_back(
        self,
        indices: list[int],
        stacked: torch.Tensor,
        pinned: dict[tuple[int, torch.dtype], torch.Tensor] | None,
    ) -> None:
        event = None
        if stacked.device.type == "cuda":
            # Pinned host memory is slow to allocate: reuse the caller's buffer when given
            # (it must not be read by an earlier PendingNorms any more).
            key = (stacked.numel(), stacked.dtype)
            host = pinned.get(key) if pinned is not None else None
            if host is None:
                host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
                if pinned is not None:
                    pinned[key] = host
            host.copy_(stacked, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
            stacked = host
        self._reads.append((indices, stacked, event))

    @property
    def deferred(self) -> bool:
        """True while a device-to-host copy is still outstanding (CUDA only)."""
        return self._values is None and any(event is not None for _, _, event in self._reads)

    def values(self) -> list[float]:
        """The norms as floats (waits for their copy to the host the first time)."""
        if self._values is None:
            assert self._tensors is not None
            norms = [0.0] * len(self._tensors)
            for indices, host, event in self._reads:
                if event is not None:
                    event.synchronize()
                for i, value in zip(indices, host.tolist(), strict=True):
                    if not _SAFE_NORM_LOW < value < _SAFE_NORM_HIGH:
                        # Squares of tiny (vanishing) or huge gradients under/overflow float32:
                        # redo this one in float64 (~13x slower, so only where it matters).
                        tensor = self._tensors[i].detach()
                        value = float(torch.linalg.vector_norm(tensor, dtype=torch.float64))
                    norms[i] = value
            self._values = norms
            self._reads = []
        return self._values

    def take(self) -> tuple[list[torch.Tensor], list[float]]:
        """The tensors and their norms; lets go of the tensors."""
        values = self.values()
        tensors, self._tensors = self._tensors or [], None
        return tensors, values


def batched_norms(
    tensors: Sequence[torch.Tensor], known: Sequence[torch.Tensor | None] | None = None
) -> list[float]:
    """L2 norms of many tensors, read back at once (see :class:`PendingNorms`)."""
    return PendingNorms(tensors, known).values()


def cheap_stats(tensor: torch.Tensor, norm: float) -> GradStats:
    """The statistics recorded for every pass: numel, norm and the NaN/Inf counts.

    A finite norm proves there is no NaN or Inf, so the counts cost nothing in the common case.
    """
    if math.isfinite(norm):
        return GradStats(numel=tensor.numel(), norm=norm, nan=0, inf=0)
    nan, inf = nonfinite_counts(tensor)
    return GradStats(numel=tensor.numel(), norm=norm, nan=nan, inf=inf)
