"""``gradscope.testing``'s gradient assertions (``testing/_grads.py``) in the cases the broader
tests leave out: complex and sparse gradients, parameters without a gradient before a bad one,
several all-zero gradients, a NaN norm. Messages are compared word for word; counts come from
the tensors the test builds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradscope.testing as gt

HINT_FINITE = (
    "Hint: NaN/Inf gradients usually start in the forward pass (log or sqrt of 0, division by "
    "0, exp overflow) or after a too-large step; gradscope.graph(loss, params=net, "
    "grads=True).first_nonfinite names the op that produced the first one"
)


def _message(error: pytest.ExceptionInfo[AssertionError]) -> str:
    return str(error.value)


def test_a_complex_gradient_with_nan_and_inf_is_counted_per_complex_element() -> None:
    z = nn.Parameter(torch.zeros(2, 2, dtype=torch.complex64))
    z.grad = torch.tensor(
        [[1 + 1j, complex(math.nan, 0.0)], [complex(0.0, math.inf), 2j]], dtype=torch.complex64
    )
    with pytest.raises(AssertionError) as error:
        gt.assert_grads_finite({"z": z})
    assert _message(error) == (
        "assert_grads_finite: 1 of 1 gradient is not finite\n"
        "  z (2, 2): 1 NaN, 1 Inf of 4 elements; first at index (0, 1) = (nan+0j)\n" + HINT_FINITE
    )


def test_a_parameter_without_a_gradient_before_a_bad_one_is_skipped_not_the_end() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[1].weight.grad = torch.tensor([[1.0, math.inf]])
    with pytest.raises(AssertionError) as error:
        gt.assert_grads_finite(net)
    assert _message(error).splitlines()[:2] == [
        "assert_grads_finite: 1 of 1 gradient is not finite",
        "  1.weight (1, 2): 0 NaN, 1 +Inf, 0 -Inf of 2 elements; first at index (0, 1) = inf",
    ]


def test_a_sparse_embedding_gradient_is_checked_as_the_dense_one() -> None:
    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    assert emb.weight.grad is not None and emb.weight.grad.layout == torch.sparse_coo
    gt.assert_all_params_have_grad(emb)  # rows 1 and 2 hold ones
    gt.assert_grads_finite(emb)
    grad = emb.weight.grad.coalesce()
    grad.values()[0, 0] = math.nan  # row 1, column 0 of the dense gradient
    emb.weight.grad = grad
    with pytest.raises(AssertionError) as error:
        gt.assert_grads_finite(emb)
    assert _message(error).splitlines()[1] == (
        "  weight (10, 3): 1 NaN, 0 +Inf, 0 -Inf of 30 elements; first at index (1, 0) = nan"
    )


def test_every_all_zero_gradient_is_counted() -> None:
    net = nn.Linear(2, 2)
    net.weight.grad, net.bias.grad = torch.zeros(2, 2), torch.zeros(2)
    with pytest.raises(AssertionError) as error:
        gt.assert_all_params_have_grad(net)
    assert _message(error).splitlines()[0] == (
        "assert_all_params_have_grad: 2 of 2 trainable parameters have no usable gradient "
        "(0 without .grad, 2 all zeros)"
    )


def test_a_nan_gradient_norm_gets_the_exploding_hint() -> None:
    net = nn.Linear(2, 2)
    net.weight.grad, net.bias.grad = torch.full((2, 2), math.nan), torch.ones(2)
    with pytest.raises(AssertionError) as error:
        gt.assert_grad_norms(net, max=10.0)
    assert _message(error).splitlines()[1:] == [
        "  weight (2, 2): gradient norm is nan (allowed: [0, 10]); largest |element| nan at "
        "index (0, 0) of 4 elements",
        "Hint: exploding gradients: lower the learning rate, clip with "
        "torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm), or check the loss scale "
        "(sum instead of mean?); raise max= if this size is expected",
    ]


def test_no_grad_looks_past_a_parameter_without_a_gradient() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[1].bias.grad = torch.tensor([0.5])
    with pytest.raises(AssertionError) as error:
        gt.assert_no_grad(net)
    assert _message(error).splitlines()[:2] == [
        "assert_no_grad: 1 of 4 parameters that must stay out of the graph has a gradient",
        "  1.bias (1,): has a gradient: norm 0.5, largest |element| 0.5 at index (0,), 1 of 1 "
        "element non-zero",
    ]


def test_no_grad_with_allow_zero_looks_past_an_all_zero_gradient() -> None:
    net = nn.Linear(2, 1)
    net.weight.grad, net.bias.grad = torch.zeros(1, 2), torch.tensor([-2.0])
    gt.assert_no_grad(net, "weight", allow_zero=True)
    with pytest.raises(AssertionError) as error:
        gt.assert_no_grad(net, allow_zero=True)
    assert _message(error).splitlines()[1] == (
        "  bias (1,): has a gradient: norm 2, largest |element| 2 at index (0,), 1 of 1 element "
        "non-zero"
    )
