"""The tolerance rule: dtype- and magnitude-aware, loose enough for torch, tight enough for bugs."""

from __future__ import annotations

import doctest

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import optim

from gradscope._optim import tolerance as _tolerance
from gradscope._optim.references import adam, sgd
from gradscope._optim.tolerance import bound, compute_dtype, factor_for, tolerance


@pytest.mark.parametrize(
    ("dtype", "c_eps"),
    # the documented rule's numbers, written out (not the module's constants): c = 8 for
    # float32/float64, 16 for (b)float16, times the dtype's machine epsilon
    [
        (torch.float32, 8 * 2.0**-23),
        (torch.float64, 8 * 2.0**-52),
        (torch.bfloat16, 16 * 2.0**-7),
        (torch.float16, 16 * 2.0**-10),
        (torch.complex64, 8 * 2.0**-23),  # checked as its float32 parts
        (torch.complex32, 16 * 2.0**-10),
    ],
)
def test_rule_is_factor_eps_times_magnitude_plus_update(dtype: torch.dtype, c_eps: float) -> None:
    before = torch.tensor([3.0, -4.0], dtype=torch.float64)
    expected = torch.tensor([3.5, -4.0], dtype=torch.float64)
    # max|before| = 4, max|update| = 0.5
    assert tolerance(before, expected, dtype) == pytest.approx(c_eps * 4.5, rel=1e-12)
    assert factor_for(dtype) * torch.finfo(compute_dtype(dtype)).eps <= c_eps


@pytest.mark.parametrize(
    ("dtype", "c", "eps", "tiny"),
    [
        (torch.float32, 8, 2.0**-23, 2.0**-126),
        (torch.float64, 8, 2.0**-52, 2.0**-1022),
        (torch.bfloat16, 16, 2.0**-7, 2.0**-126),
        (torch.float16, 16, 2.0**-10, 2.0**-14),
    ],
)
def test_bound_is_c_times_eps_scale_plus_the_smallest_normal(
    dtype: torch.dtype, c: float, eps: float, tiny: float
) -> None:
    assert bound(dtype, eps, 3.0) == pytest.approx(c * (eps * 3.0 + tiny), rel=1e-12)
    assert bound(dtype, eps, 0.0) == pytest.approx(c * tiny, rel=1e-12)
    for scale in (float("nan"), float("inf"), float("-inf")):  # judged elsewhere: counts as 0
        assert bound(dtype, eps, scale) == pytest.approx(c * tiny, rel=1e-12)


def test_low_precision_references_run_in_float32() -> None:
    assert compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float16) == torch.float32
    assert compute_dtype(torch.float64) == torch.float64


def test_integer_parameters_must_match_exactly() -> None:
    assert tolerance(torch.tensor([3, 4]), torch.tensor([3, 5])) == 0.0
    assert bound(torch.int64, 1.0, 5.0) == 8 * 5.0  # no smallest normal below an integer


def test_empty_and_non_finite_parameters_give_a_finite_bound() -> None:
    assert tolerance(torch.empty(0), torch.empty(0)) == 0.0
    assert tolerance(torch.tensor([float("inf"), 1.0]), torch.tensor([1.0, 1.0])) == 0.0
    assert tolerance(torch.tensor([float("nan"), 1.0]), torch.tensor([1.0, 1.0])) == 0.0
    assert tolerance(torch.tensor([2.0, 1.0]), torch.tensor([float("nan"), 1.0])) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    magnitude=st.sampled_from([1e-3, 1.0, 1e3]),
    lr=st.sampled_from([1e-9, 1e-6, 1e-3, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_tiny_updates_on_large_parameters_pass(
    magnitude: float, lr: float, dtype: torch.dtype
) -> None:
    # A bound relative to the update alone would fail here: the update is below one ULP of p.
    p = torch.nn.Parameter(torch.randn(64, dtype=dtype) * magnitude)
    opt = optim.SGD([p], lr=lr, momentum=0.9)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        before = p.detach().clone()
        expected = sgd(before, p.grad, dict(opt.state.get(p, {})), opt.param_groups[0]).param
        opt.step()
        assert float((p.detach() - expected).abs().max()) <= tolerance(before, expected)


@settings(max_examples=40, deadline=None)
@given(
    magnitude=st.sampled_from([1e-2, 1.0, 1e2]),
    scale=st.sampled_from([1e-2, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_a_wrong_step_is_far_outside_the_bound(
    magnitude: float, scale: float, dtype: torch.dtype
) -> None:
    # Adam moves every element by about lr, so the step is 1e-2 against |p| <= ~300:
    # doubling it, dropping it or flipping its sign must all be caught.
    before = torch.randn(32, dtype=dtype) * magnitude
    grad = torch.randn(32, dtype=dtype) * scale
    expected = adam(before, grad, {}, {"lr": 1e-2}).param
    step = expected - before
    tol = tolerance(before, expected)
    for wrong in (before, before + 2 * step, before - step):
        assert float((wrong - expected).abs().max()) > 10 * tol
    # lr off by 10% is still caught, if by a smaller margin when |p| is 1e4 times the step
    assert float((before + 1.1 * step - expected).abs().max()) > tol


def test_bfloat16_for_loop_sgd_and_adam_pass_against_the_float32_reference() -> None:
    for make, rule in (
        (lambda p: optim.SGD(p, lr=0.1, foreach=False), sgd),
        (lambda p: optim.Adam(p, lr=0.01, foreach=False), adam),
    ):
        p = torch.nn.Parameter((torch.randn(40, 30) * 3).bfloat16())
        opt = make([p])
        for _ in range(20):
            p.grad = torch.randn_like(p)
            before = p.detach().float()
            state = {
                k: float(v) if k == "step" else v.float() for k, v in opt.state.get(p, {}).items()
            }
            expected = rule(before, p.grad.float(), state, opt.param_groups[0]).param
            opt.step()
            tol = tolerance(before, expected, torch.bfloat16)
            assert float((p.detach().float() - expected).abs().max()) <= tol


def test_docstring_example_runs() -> None:
    assert doctest.testmod(_tolerance).failed == 0
