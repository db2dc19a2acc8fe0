"""Gradient statistics and what they are computed over.

Definitions (a numpy reference in the tests checks each one):

- ``norm`` is the L2 norm over every element, so a NaN anywhere makes it NaN and an Inf makes it
  Inf: it is the number ``clip_grad_norm_`` would see. It never overflows or underflows for a
  finite gradient: float32 accumulation is redone in float64 where it could have, and float64
  gradients are rescaled by a power of two where their squares would (see :func:`exact_norm`).
  A record's norm is computed once, when its pass ends, and every later read returns that number.
- ``mean``, ``std`` (population, ddof=0), ``min``, ``max`` and ``abs_max`` are over the *finite*
  elements only, so a single NaN does not hide what the rest of the gradient looks like; they are
  None when no element is finite.
- ``nan`` and ``inf`` count elements; ``zero_fraction`` is the share of elements exactly 0.

Complex gradients: the norm is ``sqrt(sum |z|^2)``; mean, std, min, max and abs_max describe the
magnitudes ``|z|``; an element counts as NaN when either part is NaN, as Inf when a part is
infinite and neither is NaN. Sparse gradients: everything is over the stored values (after
coalescing), and ``numel`` counts those values. Low-precision tensors (float16, bfloat16) are
reduced in float32; float64 stays float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "GradStats",
    "count_nonfinite",
    "exact_norm",
    "finite_part_norm",
    "full_stats",
    "norm_source",
    "reduction_dtype",
    "robust_norms64",
    "stat_view",
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
        if factor < 0 and low is not None and high is not None:  # pragma: no mutate
            # (factor <= 0: at 0 both are 0, swapped or not; low and high are None together)
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


def reduction_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 tensors, float32 for every narrower floating type."""
    return torch.float64 if dtype == torch.float64 else torch.float32  # pragma: no mutate
    # (float64 for every dtype gives the same statistics, more slowly)


def stat_view(tensor: torch.Tensor) -> torch.Tensor:
    """The elements statistics describe: a sparse tensor's stored values, else the tensor itself."""
    tensor = tensor.detach()
    if tensor.layout == torch.sparse_coo:
        return tensor.coalesce().values()
    if tensor.layout != torch.strided:  # CSR and friends: their values are the stored elements
        return tensor.values()
    return tensor


def norm_source(values: torch.Tensor) -> torch.Tensor:
    """A real tensor with the same L2 norm (a complex one as its real and imaginary parts)."""
    if values.is_complex():
        return torch.view_as_real(values.resolve_conj())
    return values


# Power-of-two rescaling is exact, so it changes no digit of a norm it brings into range.
_DOWN, _UP = 2.0**-600, 2.0**600


def robust_norms64(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norms of float64 tensors (one device), as a float64 vector on that device, no host sync.

    Squares of elements beyond about 1e154 overflow float64 and those below 1e-154 underflow, so
    norms outside (1e-150, 1e150) are recomputed on the tensor scaled by 2**-600 or 2**600.
    """
    plain = torch.stack(torch._foreach_norm(tensors))  # L2 (the default), in float64
    down = torch.stack(torch._foreach_norm(torch._foreach_mul(tensors, _DOWN))) * _UP
    up = torch.stack(torch._foreach_norm(torch._foreach_mul(tensors, _UP))) * _DOWN
    small = torch.where(plain < 1e-150, up, plain)  # pragma: no mutate (see below)
    return torch.where(plain > 1e150, down, small)  # pragma: no mutate
    # (at exactly 1e150 or 1e-150 either branch gives the same norm; 1e+150 is 1e150)


def exact_norm(values: torch.Tensor) -> float:
    """The L2 norm of ``values`` (a stat view) accumulated in float64, never over/underflowing."""
    source = norm_source(values)
    if source.numel() == 0:
        return 0.0
    if source.dtype == torch.float64:
        return float(robust_norms64([source.reshape(-1)])[0])
    return float(torch.linalg.vector_norm(source, dtype=torch.float64))


def count_nonfinite(values: torch.Tensor) -> tuple[int, int]:
    """(number of NaN elements, number of +-Inf elements) of a stat view."""
    if not (values.is_floating_point() or values.is_complex()):
        return 0, 0
    nan = torch.isnan(values)
    inf = torch.isinf(values)
    if values.is_complex():  # inf + nan*j is a NaN, not an Inf
        inf &= ~nan
    return int(nan.sum()), int(inf.sum())


def full_stats(tensor: torch.Tensor, recorded: tuple[float, int, int] | None = None) -> GradStats:
    """Every statistic of ``tensor`` (several passes over its memory: use on demand).

    ``recorded`` gives (norm, nan, inf) measured before, so the norm of a record never changes
    with when or how often it is read.
    """
    values = stat_view(tensor)
    numel = values.numel()
    if recorded is None:
        nan, inf = count_nonfinite(values)
        recorded = (exact_norm(values), nan, inf)
    norm, nan, inf = recorded
    if numel == 0:
        return GradStats(numel=0, norm=0.0, nan=0, inf=0, zero_fraction=0.0)
    if values.is_complex():
        finite_mask = torch.isfinite(values)
        zeros = int((values == 0).sum())
        flat = values.to(torch.complex128).abs().reshape(-1)  # |z| of a finite z may pass 3e38
    else:
        flat = values.to(reduction_dtype(values.dtype)).reshape(-1)
        finite_mask = torch.isfinite(flat)
        zeros = int((flat == 0).sum())
    zero_fraction = zeros / numel
    finite = flat if nan == 0 and inf == 0 else flat[finite_mask.reshape(-1)]  # pragma: no mutate
    # (masking a tensor with nothing to drop keeps it whole: the test only saves a copy)
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


def finite_part_norm(values: torch.Tensor) -> float:
    """The L2 norm of the finite elements only (a fingerprint for a gradient holding NaN/Inf)."""
    source = norm_source(values)
    return exact_norm(source[torch.isfinite(source)])  # 0.0 when nothing is finite
