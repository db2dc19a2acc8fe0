"""``watch(net, on_problem="warn" | "raise")``: fail fast, out of ``loss.backward()``."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import gradscope


class LogNet(nn.Module):
    """Linear -> log: the log of negative outputs is NaN from the first pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.out = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.log(self.fc(x)))


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).detach())


def test_raise_stops_the_loop_at_the_first_bad_pass_with_every_grad_written() -> None:
    net = LogNet()
    twin = copy.deepcopy(net)
    x = torch.randn(8, 4)
    with (
        gradscope.watch(net, on_problem="raise") as w,
        pytest.raises(gradscope.ProblemFound) as caught,
    ):
        net(x).sum().backward()
    finding = caught.value.finding
    assert isinstance(finding, gradscope.Finding)
    assert finding.kind == "nonfinite_forward" and finding.module == ""
    assert str(caught.value) == str(finding)
    assert "torch.log" in str(finding)  # the pass is run again to name the op, as it ends
    # the exception came after autograd had written every .grad: the same as without a watch
    twin(x).sum().backward()
    for (name, p), q in zip(net.named_parameters(), twin.parameters(), strict=True):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)
    assert len(w.records) == 1 and not w.errors


def test_raise_names_a_parameter_that_gets_no_gradient() -> None:
    net = Detached()
    with gradscope.watch(net, on_problem="raise"), pytest.raises(gradscope.ProblemFound) as caught:
        net(torch.randn(2, 4)).sum().backward()
    assert caught.value.finding.kind == "no_gradient"
    assert caught.value.finding.params == ("a.weight", "a.bias")


def test_warn_warns_once_per_problem_and_training_goes_on() -> None:
    net = Detached()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with (
        gradscope.watch(net, optimizer=opt, on_problem="warn") as w,
        pytest.warns(gradscope.GradscopeWarning, match="no_gradient: a.weight, a.bias"),
    ):
        for _ in range(5):
            opt.zero_grad()
            net(torch.randn(2, 4)).sum().backward()
            opt.step()
    assert len(w.records) == 5


def test_warn_once_for_the_same_finding() -> None:
    net = Detached()
    with gradscope.watch(net, on_problem="warn"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(4):
            net(torch.randn(2, 4)).sum().backward()
    assert len([w for w in seen if issubclass(w.category, gradscope.GradscopeWarning)]) == 1


def test_off_by_default_and_healthy_runs_stay_quiet() -> None:
    net = Detached()
    with gradscope.watch(net) as w:  # None: nothing raised, the diagnosis still finds it
        net(torch.randn(2, 4)).sum().backward()
    assert w.diagnose()[0].kind == "no_gradient"
    healthy = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with gradscope.watch(healthy, on_problem="raise"):
        for _ in range(3):
            healthy(torch.randn(2, 4)).sum().backward()


def test_a_branch_that_is_only_sometimes_used_does_not_raise() -> None:
    net = Detached()
    net.forward = lambda x, n=[0]: (  # type: ignore[method-assign]
        n.__setitem__(0, n[0] + 1) or net.b(net.a(x) if n[0] == 1 else net.a(x).detach())
    )
    with gradscope.watch(net, on_problem="raise"):
        for _ in range(3):  # a got a gradient in pass 1: later misses are not "never"
            net(torch.randn(2, 4)).sum().backward()


@pytest.mark.parametrize("bad", ["stop", True, 1])
def test_bad_values_are_refused_and_leave_no_hooks(bad: object) -> None:
    net = nn.Linear(2, 1)
    with pytest.raises(gradscope.GradscopeError, match="on_problem="):
        gradscope.watch(net, on_problem=bad)  # type: ignore[arg-type]
    assert not net._forward_pre_hooks and not net._forward_hooks
    assert not net.weight._backward_hooks


@pytest.mark.parametrize("on_problem", [None, "raise"])
def test_the_per_pass_checks_read_only_the_counts_taken_as_the_pass_ended(
    on_problem: str | None,
) -> None:
    """The full statistics (mean, std, min, max: a pass over every gradient) stay unread by
    the watch's own per-pass checks; computing them each pass made an MLP step 4x slower."""
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradscope.watch(net, optimizer=opt, on_problem=on_problem) as w:
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(4, 8)).sum().backward()
            opt.step()
        assert all(g._full is None for r in w.records for g in r.grads.values())
