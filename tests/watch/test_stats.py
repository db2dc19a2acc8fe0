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
from gradscope._watch.stats import full_stats

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
    assert stats.numel == 0 and stats.norm == 0.0
    assert Reading([torch.zeros(0)]).get(0) == (0.0, 0, 0)


def test_scaled_undoes_a_loss_scale() -> None:
    tensor = torch.tensor([-4.0, 2.0, 0.0])
    assert full_stats(tensor * 8).scaled(1 / 8) == full_stats(tensor)
