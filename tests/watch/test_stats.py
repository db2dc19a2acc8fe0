"""Statistics against a numpy reference, over shapes, dtypes and values with NaN and Inf."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradscope._watch.reading import Reading
from gradscope._watch.stats import (
    GradStats,
    count_nonfinite,
    exact_norm,
    finite_part_norm,
    full_stats,
    robust_norms64,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}

values = st.floats(width=32, min_value=-1e6, max_value=1e6)
special = st.sampled_from([0.0, -0.0, 1.0, -2.5, math.nan, math.inf, -math.inf, 1e-30])


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    array = draw(hnp.arrays(np.float64, shape, elements=st.one_of(values, special)))
    return torch.from_numpy(array).to(dtype)


def numpy_reference(tensor: torch.Tensor) -> dict[str, float | int | None]:
    x = tensor.to(torch.float64).numpy().reshape(-1)
    finite = x[np.isfinite(x)]
    has_finite = finite.size > 0
    return {
        "numel": x.size,
        "norm": float(np.linalg.norm(x)),
        "nan": int(np.isnan(x).sum()),
        "inf": int(np.isinf(x).sum()),
        "mean": float(np.mean(finite)) if has_finite else None,
        "std": float(np.std(finite)) if has_finite else None,
        "min": float(np.min(finite)) if has_finite else None,
        "max": float(np.max(finite)) if has_finite else None,
        "abs_max": float(np.max(np.abs(finite))) if has_finite else None,
        "zero_fraction": float(np.mean(x == 0)),
    }


def close(actual: float | None, expected: float | None, scale: float) -> bool:
    if expected is None or actual is None:
        return actual is expected
    if math.isnan(expected):
        return math.isnan(actual)
    if math.isinf(expected):
        return actual == expected
    return abs(actual - expected) <= 1e-5 * scale + 1e-30


@settings(max_examples=60, deadline=None)
@given(tensors())
def test_full_stats_match_numpy(tensor: torch.Tensor) -> None:
    stats = full_stats(tensor)
    expected = numpy_reference(tensor)
    finite = tensor.to(torch.float64)[torch.isfinite(tensor)]
    scale = float(finite.abs().max()) * max(1, finite.numel()) if finite.numel() else 1.0
    assert stats.numel == expected["numel"]
    assert stats.nan == expected["nan"]
    assert stats.inf == expected["inf"]
    assert stats.zero_fraction == pytest.approx(expected["zero_fraction"])
    for field in ("norm", "mean", "std", "min", "max", "abs_max"):
        assert close(getattr(stats, field), expected[field], scale), field  # type: ignore[arg-type]
    assert stats.finite == (expected["nan"] == 0 and expected["inf"] == 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=5))
def test_reading_matches_numpy(group: list[torch.Tensor]) -> None:
    reading = Reading(group)
    for i, tensor in enumerate(group):
        norm, nan, inf = reading.get(i)
        expected = numpy_reference(tensor)
        finite = tensor.to(torch.float64)[torch.isfinite(tensor)]
        scale = float(finite.abs().max()) * max(1, finite.numel()) if finite.numel() else 1.0
        assert close(norm, expected["norm"], scale)  # type: ignore[arg-type]
        assert (nan, inf) == (expected["nan"], expected["inf"])


def test_bfloat16_norm_is_reduced_in_float32() -> None:
    tensor = torch.full((1000,), 0.01, dtype=torch.bfloat16)
    exact = float(np.linalg.norm(tensor.to(torch.float64).numpy()))
    norm, _, _ = Reading([tensor]).get(0)
    assert norm == pytest.approx(exact, rel=1e-6)


def test_all_nan_tensor_has_no_finite_statistics() -> None:
    stats = full_stats(torch.full((3,), math.nan))
    assert stats.nan == 3 and stats.mean is None and stats.abs_max is None
    assert math.isnan(stats.norm)


def test_empty_tensor() -> None:
    stats = full_stats(torch.zeros(0))
    assert stats == GradStats(numel=0, norm=0.0, nan=0, inf=0, zero_fraction=0.0)
    assert Reading([torch.zeros(0)]).get(0) == (0.0, 0, 0)


def test_scaled_undoes_a_loss_scale() -> None:
    tensor = torch.tensor([-4.0, 2.0, 0.0])
    assert full_stats(tensor * 8).scaled(1 / 8) == full_stats(tensor)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        hnp.arrays(
            np.float64,
            hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
            elements=st.floats(min_value=-1e140, max_value=1e140),
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([1.0, 1e-160, 1e160, 1e-300]),
)
def test_float64_norms_are_exact_at_every_magnitude(arrays: list[np.ndarray], scale: float) -> None:
    """Oracle: math.hypot, which scales internally (no overflow or underflow, correctly rounded
    to about one ulp): float64 norms from 1e-300 to 1e300 agree to 1e-13."""
    tensors = [torch.from_numpy(a * scale) for a in arrays]
    norms = robust_norms64([t.reshape(-1) for t in tensors]).tolist()
    for t, norm in zip(tensors, norms, strict=True):
        expected = math.hypot(*t.reshape(-1).tolist())
        assert norm == pytest.approx(expected, rel=1e-13, abs=0.0)
        assert exact_norm(t) == pytest.approx(expected, rel=1e-13, abs=0.0)


def test_integer_values_have_no_nan_or_inf() -> None:
    assert count_nonfinite(torch.tensor([1, 2, 3])) == (0, 0)
    assert count_nonfinite(torch.tensor([True, False])) == (0, 0)
    assert count_nonfinite(torch.tensor([math.nan, math.inf, -math.inf, 1.0])) == (1, 2)
    # a complex element with a NaN part is NaN, else Inf if a part is infinite
    z = torch.tensor([complex(math.inf, math.nan), complex(math.inf, 0), complex(1, -math.inf)])
    assert count_nonfinite(z) == (1, 2)


def test_finite_part_norm_is_the_norm_of_the_finite_elements() -> None:
    assert finite_part_norm(torch.tensor([3.0, math.nan, -4.0, math.inf])) == 5.0
    assert finite_part_norm(torch.tensor([math.nan, -math.inf])) == 0.0
    # complex: over the finite real and imaginary parts (a fingerprint, not |z|)
    z = torch.tensor([complex(3, 4), complex(math.nan, 1)])
    assert finite_part_norm(z) == pytest.approx(math.sqrt(9 + 16 + 1), rel=1e-15)


def test_scaled_by_a_negative_factor_swaps_min_and_max() -> None:
    tensor = torch.tensor([-4.0, 2.0, 0.0, 1.0])
    scaled = full_stats(tensor).scaled(-0.5)
    expected = full_stats(tensor * -0.5)
    assert scaled == expected
    assert (scaled.min, scaled.max, scaled.abs_max, scaled.norm) == (-1.0, 2.0, 2.0, expected.norm)
    assert scaled.std == pytest.approx(float(np.std([-4.0, 2.0, 0.0, 1.0])) * 0.5)


def test_scaled_keeps_missing_statistics_missing() -> None:
    stats = full_stats(torch.tensor([math.nan, math.inf]))
    for factor in (0.25, -0.25):
        scaled = stats.scaled(factor)
        assert (scaled.mean, scaled.std, scaled.min, scaled.max, scaled.abs_max) == (None,) * 5
        assert (scaled.nan, scaled.inf, scaled.numel) == (1, 1, 2) and math.isnan(scaled.norm)
    bare = GradStats(numel=3, norm=2.0, nan=0, inf=0)  # norm only, as a cheap record keeps
    assert bare.scaled(-2.0) == GradStats(numel=3, norm=4.0, nan=0, inf=0)


def test_statistics_of_values_beyond_float32_stay_finite() -> None:
    """float64 values are reduced in float64, and |z| of a complex64 element in float64: a
    finite 1e300 or |3e38 + 3e38j| = 4.24e38 must not read as Inf (numpy oracle)."""
    big = torch.tensor([1e300, -2e300, 4.0], dtype=torch.float64)
    stats = full_stats(big)
    assert (stats.max, stats.min, stats.abs_max) == (1e300, -2e300, 2e300)
    assert stats.mean == pytest.approx(float(np.mean(big.numpy())), rel=1e-12)
    z = torch.tensor([complex(3e38, 3e38), complex(0, 1)], dtype=torch.complex64)
    expected = np.abs(z.numpy().astype(np.complex128))
    stats = full_stats(z)
    assert stats.abs_max == pytest.approx(float(expected.max()), rel=1e-7)
    assert stats.mean == pytest.approx(float(expected.mean()), rel=1e-7)
    assert stats.inf == 0 and math.isfinite(stats.max)  # type: ignore[arg-type]
