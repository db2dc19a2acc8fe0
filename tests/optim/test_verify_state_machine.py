"""verify_optimizer driven through random training: good steps, steps that raise after the
check has started, deliberately wrong steps, lr changes (to 0 too), zero_grad both ways and
parameters without gradients, against torch.optim as the oracle: a real step of a torch
optimizer is ok, a wrong one fails, a raising one leaves no report and does not spoil the next.

CI runs a fixed budget (derandomized); explore longer locally with
``GRADSCOPE_STATEFUL_EXAMPLES=500 pytest tests/optim/test_verify_state_machine.py``.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from optim_cases import OPTIMIZERS
from torch import nn

import gradscope

FAMILIES = ["SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "RMSprop", "Adagrad", "Adadelta"]


class _Simulated(RuntimeError):
    pass


def _flaky(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``cls`` whose step can raise (after the step hooks started) or use twice its lr."""

    def step(self: Any, closure: Any = None) -> Any:
        if self.mode == "raise":
            self.mode = ""
            raise _Simulated("out of memory in the middle of step() (simulated)")
        if self.mode == "double":
            self.mode = ""
            saved = [group["lr"] for group in self.param_groups]
            for group in self.param_groups:
                group["lr"] = group["lr"] * 2
            try:
                return cls.step(self, closure)
            finally:
                for group, lr in zip(self.param_groups, saved, strict=True):
                    group["lr"] = lr
        return cls.step(self, closure)

    return type(f"Flaky{cls.__name__}", (cls,), {"step": step, "mode": ""})


class VerifiedTraining(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.expect_note = False

    @initialize(
        family=st.sampled_from(FAMILIES),
        data=st.data(),
        foreach=st.booleans(),
    )
    def build(self, family: str, data: st.DataObject, foreach: bool) -> None:
        torch.manual_seed(0)
        cls, hyper, _ = OPTIMIZERS[family]
        kwargs = data.draw(hyper, label="hyperparameters")
        kwargs["lr"] = max(float(kwargs["lr"]), 1e-2)  # a doubled lr must be visible
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), nn.Linear(3, 2))
        self.twin = copy.deepcopy(self.net)
        groups = [
            {"params": list(self.net[0].parameters()) + list(self.net[2].parameters())},
            {"params": list(self.net[3].parameters())},
        ]
        twin_groups = [
            {"params": list(self.twin[0].parameters()) + list(self.twin[2].parameters())},
            {"params": list(self.twin[3].parameters())},
        ]
        self.opt = _flaky(cls)(groups, foreach=foreach, **kwargs)
        self.oracle = cls(twin_groups, foreach=foreach, **kwargs)  # plain torch.optim
        self.verifier = gradscope.verify_optimizer(self.opt, params=self.net)
        self.x = torch.randn(5, 4)

    def _backward(self, skip_last: bool) -> None:
        for net in (self.net, self.twin):
            out = net[2](net[1](net[0](self.x)))
            if not skip_last:
                out = net[3](out)
            out.tanh().sum().backward()  # bounded gradients: maximize=True must not explode

    def _reports(self) -> list[gradscope.StepReport]:
        return self.verifier.reports

    @rule(skip_last=st.booleans())
    def good_step(self, skip_last: bool) -> None:
        self._backward(skip_last)
        before = len(self._reports())
        with warnings.catch_warnings():
            warnings.simplefilter("error", gradscope.GradscopeWarning)
            self.opt.step()
        self.oracle.step()
        assert len(self._reports()) == before + 1
        report = self._reports()[-1]
        assert report.ok, str(report)
        raised_note = any("raised before it finished" in n for n in report.notes)
        assert raised_note == self.expect_note, str(report)
        self.expect_note = False
        self.steps += 1

    @rule()
    def step_that_raises(self) -> None:
        self._backward(False)
        before = len(self._reports())
        self.opt.mode = "raise"  # type: ignore[attr-defined]
        try:
            self.opt.step()
        except _Simulated:
            pass
        else:
            raise AssertionError("the step should have raised")
        assert len(self._reports()) == before  # nothing to report: the step did not finish
        self.expect_note = True
        for net in (self.net, self.twin):
            net.zero_grad()

    @precondition(lambda self: all(g["lr"] > 0 for g in self.opt.param_groups))
    @rule()
    def wrong_step(self) -> None:
        self._backward(False)
        self.opt.mode = "double"  # type: ignore[attr-defined]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", gradscope.GradscopeWarning)
            self.opt.step()
        report = self._reports()[-1]
        # every parameter the reference moves is off by a whole step: it fails, or the report
        # says the step is within the tolerance (a small update after a restart) and so unseen;
        # twice a zero step (tanh saturated in float32: gradients exactly 0) is still right
        moved = [p for p in report.params if p.max_update]
        assert all(p.failed or p.unresolved for p in moved), str(report)
        if any(p.failed for p in moved):
            assert not report.ok and caught, "a step with twice the lr passed"
        assert all(p.reasons for p in report.failures), str(report)
        self.expect_note = False
        self.steps += 1
        # the oracle takes the same wrong step, so the twins stay equal
        for group in self.oracle.param_groups:
            group["lr"] *= 2
        self.oracle.step()
        for group in self.oracle.param_groups:
            group["lr"] /= 2

    @rule(group=st.sampled_from([0, 1]), lr=st.sampled_from([0.0, 1e-2, 0.05, 0.1]))
    def change_lr(self, group: int, lr: float) -> None:
        self.opt.param_groups[group]["lr"] = lr
        self.oracle.param_groups[group]["lr"] = lr

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none: bool) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)
        self.oracle.zero_grad(set_to_none=set_to_none)

    @invariant()
    def same_as_the_oracle(self) -> None:
        if not hasattr(self, "net"):
            return
        for (name, a), b in zip(self.net.named_parameters(), self.twin.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=name)
        assert len(self._reports()) == self.steps

    def teardown(self) -> None:
        if hasattr(self, "verifier"):
            self.verifier.close()
            assert not self.opt._optimizer_step_pre_hooks
            assert not self.opt._optimizer_step_post_hooks


VerifiedTraining.TestCase.settings = settings(
    max_examples=int(os.environ.get("GRADSCOPE_STATEFUL_EXAMPLES", "25")),
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_verify_optimizer_state_machine = VerifiedTraining.TestCase
