"""The forward checks reduce each tensor through ``REDUCERS`` (decided once per dtype): the same
sum as ``finite_sum``, bit for bit, for every dtype it checks, and no sum for those it does not."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from gradscope._watch.forward_pass import REDUCERS, finite_sum

CHECKED = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
]


@given(
    st.sampled_from(CHECKED),
    st.integers(1, 300),
    st.sampled_from([None, math.nan, math.inf, -math.inf]),
    st.booleans(),
    st.integers(0, 10_000),
)
def test_reducers_give_finite_sums_value_bit_for_bit(
    dtype: torch.dtype, n: int, bad: float | None, grad: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(n, generator=g, dtype=torch.float64) * 1e3).to(dtype)
    if bad is not None:
        values[seed % n] = bad
    t = values.requires_grad_(grad) * 1 if grad else values
    reduce = REDUCERS[dtype]
    assert reduce is not None
    got, expected = reduce(t), finite_sum(t)
    assert got.dtype == expected.dtype == torch.float32 and got.shape == ()
    assert got.grad_fn is None and not got.requires_grad  # no graph, even from t that has one
    assert torch.equal(got, expected) or (got.isnan() and expected.isnan())
    assert math.isfinite(float(got)) == bool(torch.isfinite(values.detach()).all())  # oracle


def test_integer_and_bool_tensors_are_not_summed() -> None:
    for dtype in (torch.int64, torch.int32, torch.uint8, torch.bool):
        assert REDUCERS[dtype] is None
    assert dict(REDUCERS)[torch.bool] is None  # decided once, then a plain lookup
