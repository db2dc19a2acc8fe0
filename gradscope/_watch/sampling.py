"""A few elements of a tensor, spread evenly over it: what the step and pass signals measure.

Reading every element of every weight around each step would cost a full pass over the model's
memory; the diagnosis needs ratios and "is anything non-zero", for which an even sample of
``SAMPLE`` elements (every element of smaller tensors) is enough.
"""

from __future__ import annotations

import torch

__all__ = ["SAMPLE", "sample"]

SAMPLE = 1024


def sample(t: torch.Tensor) -> torch.Tensor:
    """Up to ``SAMPLE`` elements of ``t`` spread evenly over it, as a view when possible.

    >>> sample(torch.arange(4096.0))[:3]
    tensor([0., 4., 8.])
    """
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_complex():
        t = torch.view_as_real(t)
    numel = t.numel()
    if numel <= SAMPLE:
        return t.reshape(-1)
    stride = numel // SAMPLE
    if t.is_contiguous():
        return t.as_strided((SAMPLE,), (stride,))
    return t.reshape(-1)[::stride][:SAMPLE]
