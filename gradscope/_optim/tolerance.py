"""How far a parameter may sit from its reference value after one step.

The rule, per parameter (one number for the whole tensor)::

    tolerance = c * eps(dtype) * (max|p before the step| + max|reference update|)

with ``eps`` the machine epsilon of the parameter's dtype, ``c = 8`` for float32 and float64 and
``c = 16`` for float16 and bfloat16, whose references are computed in float32 (their optimizers
keep their state in the low precision too, so each of several stored intermediates is rounded).

Why this shape: the new value is ``p + update`` rounded to the dtype, so it carries an error of
about ``eps * |p|`` no matter how small the update is (a tolerance relative to the update alone
fails tiny updates), and the update itself is computed in a different order by the for-loop,
foreach and fused kernels, which adds a few ``eps * |update|``. Measured on torch 2.13 CPU over
30 steps of SGD, Adam, AdamW, RMSprop and Adagrad with their options, the worst difference was
0.95 of ``eps * (max|p| + max|update|)`` in float32 and float64, 0.6 in bfloat16 and 0.93 in
float16 (except the fused (b)float16 SGD kernel, which differs from float32 arithmetic by 3 to
several hundred on this scale: flagged when above 16).
A real mistake (wrong lr, sign, a skipped or doubled step) is off by a whole update.

The comparison adds ``c * eps * sensitivity`` on top, where a rule amplifies rounding; the
built-in rules state it analytically (``Update.error``). The case that needs it: with L2 weight
decay ``d = g + wd * p`` can cancel to about Adam's ``eps``, where torch's rounding of ``d``, about
``eps * (|g| + wd |p|)``, moves the step ``m / (sqrt(v) + eps)`` by up to
``(lr (1 - beta1) / bc1 + |step|) / denom`` times it (the step is at most linear in ``d`` over
the denominator, and the denominator moves by at most what ``d`` moves). Centred RMSprop's
``sqrt(square_avg - grad_avg**2)`` cancels the same way. A user's ``reference=`` is nudged by
one ulp of param and grad instead.

A state entry follows the same rule on ``max|old value| + max|new value|`` (an EMA
``b s + (1 - b) x`` rounds to about ``eps (|s_old| + |s_new|)``), plus its own sensitivity. Each
step starts from the optimizer's own state, so rounding never accumulates across steps. Below
the dtype's smallest normal number a few ulps are added (NAdam's ``mu_product`` reaches 1e-40).

>>> import torch
>>> tolerance(torch.tensor([1.0, -2.0]), torch.tensor([0.9, -2.1]))  # 8 * 2**-23 * (2 + 0.1)
2.002715973503655e-06
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = [
    "FACTOR",
    "LOW_PRECISION_FACTOR",
    "bound",
    "compute_dtype",
    "factor_for",
    "real_dtype",
    "tolerance",
]

FACTOR = 8.0
LOW_PRECISION_FACTOR = 16.0
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype a reference runs in: float32 for (b)float16, else the (real) dtype itself.

    Complex parameters are checked as real views, as torch.optim updates them.

    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.complex128)
    (torch.float32, torch.float64)
    """
    dtype = real_dtype(dtype)
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a complex dtype's real and imaginary parts (the dtype itself if real)."""
    return {torch.complex32: torch.float16, torch.complex64: torch.float32}.get(
        dtype, torch.float64 if dtype == torch.complex128 else dtype
    )


def factor_for(dtype: torch.dtype) -> float:
    """``c`` of the rule: 16 for (b)float16 (several stored roundings), else 8."""
    return LOW_PRECISION_FACTOR if real_dtype(dtype) in _LOW_PRECISION else FACTOR


@functools.cache
def _floor(dtype: torch.dtype) -> tuple[float, float]:
    real = real_dtype(dtype)
    return factor_for(dtype), torch.finfo(real).tiny if real.is_floating_point else 0.0


def bound(dtype: torch.dtype, eps: float, scale: float) -> float:
    """``c * (eps * scale + tiny)``: the rule's bound, with ``tiny`` the dtype's smallest normal
    number (below it, subnormals keep fewer bits than ``eps`` says). A non-finite scale counts
    as 0: a NaN or Inf is judged elsewhere.
    """
    if not math.isfinite(scale):
        scale = 0.0
    factor, tiny = _floor(dtype)
    return factor * (eps * scale + tiny)


def tolerance(
    before: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None
) -> float:
    """The largest max-abs difference to ``expected`` that still counts as a match.

    ``before`` is the parameter before the step, ``expected`` the reference's new value and
    ``dtype`` the parameter's own dtype (defaults to ``before.dtype``).
    """
    dtype = real_dtype(dtype or before.dtype)
    if not dtype.is_floating_point:
        return 0.0
    if before.numel() == 0:
        return 0.0
    magnitude = before.detach().abs().max()
    update = (expected.detach() - before.detach()).abs().max()
    scale = float(magnitude + update)
    if not math.isfinite(scale):  # a NaN or Inf is judged elsewhere
        scale = 0.0
    return factor_for(dtype) * torch.finfo(dtype).eps * scale
