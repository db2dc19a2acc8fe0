"""``gradscope.testing.assert_healthy``: the diagnosis as a test assertion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope
import gradscope.testing as gt


def _train(mistakes: bool, steps: int = 4) -> gradscope.Watch:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    params = [*net[2].parameters()] if mistakes else [*net.parameters()]  # net[0] left out
    opt = torch.optim.SGD(params, lr=0.05)
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(steps):
            if not mistakes:  # the second mistake: no zero_grad
                opt.zero_grad()
            net(torch.randn(6, 4)).pow(2).mean().backward()
            opt.step()
    return w


def test_a_healthy_run_passes() -> None:
    gt.assert_healthy(_train(mistakes=False))


def test_every_problem_is_listed_at_once_with_its_fix() -> None:
    with pytest.raises(gradscope.GradientAssertionError) as caught:
        gt.assert_healthy(_train(mistakes=True), msg="epoch 3")
    lines = str(caught.value).splitlines()
    assert lines[0] == "epoch 3"
    assert lines[1] == (
        "assert_healthy: the diagnosis of Sequential found 2 problems in 4 recorded backward passes"
    )
    assert lines[2].startswith("  error not_in_optimizer: 0.weight, 0.bias get gradients")
    assert "[0.weight, 0.bias; module '0'; passes 1-4] Fix: build the optimizer" in lines[2]
    assert lines[3].startswith("  error grads_accumulating: .grad is never cleared")
    assert lines[-1].startswith("Hint: each line ends with its most likely fix; allow=")
    assert isinstance(caught.value, AssertionError)


def test_allow_accepts_the_kinds_you_expect() -> None:
    w = _train(mistakes=True)
    with pytest.raises(gradscope.GradientAssertionError, match="1 problem in"):
        gt.assert_healthy(w, allow="grads_accumulating")
    gt.assert_healthy(w, allow=["grads_accumulating", "not_in_optimizer"])


@pytest.mark.parametrize(
    ("allow", "message"),
    [
        ("no_grad", "'no_grad' is not one; did you mean 'no_gradient'"),
        ([3], "3 is not one"),
    ],
)
def test_an_unknown_kind_is_an_error_that_suggests_one(allow: object, message: str) -> None:
    with pytest.raises(gradscope.GradscopeError, match=message):
        gt.assert_healthy(_train(mistakes=False), allow=allow)  # type: ignore[arg-type]


def test_it_takes_a_watch() -> None:
    with pytest.raises(gradscope.GradscopeError, match=r"expected the object gradscope\.watch"):
        gt.assert_healthy(nn.Linear(2, 1))  # type: ignore[arg-type]
