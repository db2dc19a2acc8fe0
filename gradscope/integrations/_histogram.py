"""Gradient histograms for TensorBoard, computed on the tensors' device, NaN/Inf kept apart.

TensorBoard's own ``add_histogram`` raises "The histogram is empty" on an all-NaN tensor and
folds Inf into its edge buckets. Here the buckets hold the finite values only; NaN and Inf are
counted apart (the caller logs that count as a scalar). Two host transfers per call, whatever
the number of tensors (one for the ranges, one for the bucket counts; a third when a tensor
holds NaN or Inf), and four passes over a finite tensor's memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Histogram", "histograms"]


@dataclass(frozen=True)
class Histogram:
    """The finite values of one tensor in ``len(bucket_counts)`` equal buckets between ``min``
    and ``max``; ``bucket_limits`` are the buckets' upper edges. ``nonfinite`` counts the NaN
    and Inf elements left out of every other field."""

    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    bucket_limits: tuple[float, ...]
    bucket_counts: tuple[float, ...]
    nonfinite: int


_HISTC_SAFE = 1e30


def _exact_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _values(tensor: torch.Tensor) -> torch.Tensor:
    values = tensor.detach()
    if values.layout != torch.strided:
        values = values.to_dense()
    values = values.reshape(-1)
    if values.dtype != torch.float64:
        values = values.float()
    return values


def _read(parts: list[torch.Tensor]) -> list[list[float]]:
    """``parts`` (1-d tensors, any devices) as lists of floats: one transfer per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, part in enumerate(parts):
        by_device.setdefault(part.device, []).append(i)
    out: list[list[float]] = [[] for _ in parts]
    for device, indices in by_device.items():
        stacked = torch.stack([parts[i].to(_exact_dtype(device)) for i in indices])
        for i, row in zip(indices, stacked.tolist(), strict=True):
            out[i] = row
    return out


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _summary(values: torch.Tensor, masked: bool) -> torch.Tensor:
    """[min, max, count, sum, sum of squares] of the (finite) values, on their device."""
    exact = _exact_dtype(values.device)
    if not values.numel():
        return torch.zeros(5, dtype=exact, device=values.device)
    if masked:
        finite = torch.isfinite(values)
        zero = torch.zeros((), dtype=values.dtype, device=values.device)
        kept = torch.where(finite, values, zero)
        low = torch.where(finite, values, torch.inf).amin()
        high = torch.where(finite, values, -torch.inf).amax()
        count = finite.sum()
        kept = kept.to(exact)  # squares of huge finite values overflow float32
    else:
        kept = values
        low, high = torch.aminmax(values)
        count = torch.full((), values.numel(), device=values.device)
    parts = [low, high, count, kept.sum(dtype=exact), torch.dot(kept, kept)]
    return torch.stack([part.to(exact) for part in parts])


def histograms(tensors: Sequence[torch.Tensor], bins: int = 64) -> list[Histogram | None]:
    """One :class:`Histogram` per tensor, None where no element is finite.

    >>> h = histograms([torch.tensor([0.0, 1.0, float("nan"), 1.0])], bins=2)[0]
    >>> h.num, h.nonfinite, h.bucket_counts, h.bucket_limits
    (3, 1, (1.0, 2.0), (0.5, 1.0))
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins={bins!r}: pass a positive int")
    # Pass 1, on device. min and max propagate NaN and show Inf, so when both come back finite
    # the whole tensor is finite and three passes give its summary; the (rare) others, and
    # those whose squares overflowed, are summarised again with NaN and Inf masked out.
    summaries = _read([_summary(_values(t), masked=False) for t in tensors])
    redo = [i for i, row in enumerate(summaries) if not _finite(*row)]
    if redo:
        again = _read([_summary(_values(tensors[i]), masked=True) for i in redo])
        for i, row in zip(redo, again, strict=True):
            summaries[i] = row
    counts: list[torch.Tensor] = []
    for tensor, (low, high, num, _, _) in zip(tensors, summaries, strict=True):
        if num == 0 or low == high:
            counts.append(torch.zeros(bins))  # placeholder, stacked with the others
            continue
        values = _values(tensor)
        if max(abs(low), abs(high)) > _HISTC_SAFE and values.device.type != "mps":
            # (x - min) * bins / (max - min) overflows float32 there.
            values = values.double()
        if num < values.numel():
            # Non-finite values go to the lowest bucket, then come out again: no boolean
            # indexing, which would sync the device to learn the result's size.
            lowest = torch.full((), low, dtype=values.dtype, device=values.device)
            values = torch.where(torch.isfinite(values), values, lowest)
        # Bucket indices and one bincount: faster than torch.histc on CPU (7 against 11 ms for
        # 2**20 floats here); the top edge belongs to the last bucket, as in histc and numpy.
        # Divide first: bins / (max - min) overflows for a tiny range such as (0, 1e-38).
        index = ((values - low) / (high - low) * bins).to(torch.int32).clamp_(0, bins - 1)
        counted = torch.bincount(index, minlength=bins).to(torch.float64)
        counted[0] -= values.numel() - num
        counts.append(counted)
    read_counts = _read(counts)
    out: list[Histogram | None] = []
    for tensor, (low, high, num, total, squares), bucket in zip(
        tensors, summaries, read_counts, strict=True
    ):
        if num == 0:
            out.append(None)
            continue
        if low == high:
            limits: tuple[float, ...] = (high,)
            bucket = [num]
        else:
            width = (high - low) / bins
            limits = (*(low + width * (i + 1) for i in range(bins - 1)), high)
        out.append(
            Histogram(
                min=low,
                max=high,
                num=int(num),
                sum=total,
                sum_squares=squares,
                bucket_limits=limits,
                bucket_counts=tuple(float(c) for c in bucket),
                nonfinite=tensor.numel() - int(num),
            )
        )
    return out
