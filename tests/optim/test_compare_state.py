"""The optimizer-state verdicts of a checked step, entry by entry (``_optim/compare_state.py``).

Every expected number is torch's own optimizer state or the documented tolerance written out
(``c * (eps * (max|new| + max|old|) + tiny)`` with ``c = 8`` in float32, docs/optimizer.rst);
every expected message is a literal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn, optim

import gradscope
from gradscope._optim.compare_state import spread

F32 = torch.finfo(torch.float32)


def _documented(*scales: float) -> float:
    """The documented state tolerance in float32 for these magnitudes."""
    return 8.0 * (F32.eps * sum(scales) + F32.tiny)


class _AfterStep(optim.SGD):
    """torch's SGD, then ``bug(optimizer)`` run on its state: an injected mistake."""

    def __init__(self, params: Any, bug: Callable[[optim.Optimizer], None], **kw: Any) -> None:
        super().__init__(params, **kw)
        self.bug = bug

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        self.bug(self)


def _buffers(opt: optim.Optimizer) -> list[torch.Tensor]:
    return [opt.state[p]["momentum_buffer"] for p in opt.param_groups[0]["params"]]


def _checked(opt: optim.Optimizer, params: dict[str, nn.Parameter]) -> gradscope.StepReport:
    with gradscope.check_step(opt, params=params) as report:
        opt.step()
    return report


# ---- tolerances -----------------------------------------------------------------------------


def test_a_state_entry_is_judged_against_its_new_and_old_magnitudes() -> None:
    # momentum_buffer at the second step: new = 0.9 * old + g, both read from torch's own state
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = torch.tensor([0.5, -1.5, 2.0])
    opt.step()
    old = float(opt.state[w]["momentum_buffer"].abs().max())
    w.grad = torch.tensor([0.25, 1.0, -0.75])
    report = _checked(opt, {"w": w})
    new = float(opt.state[w]["momentum_buffer"].abs().max())
    (buffer,) = report["w"].state
    assert (buffer.entry, buffer.verdict, buffer.max_abs_diff) == ("momentum_buffer", "ok", 0.0)
    assert (old, new) == (2.0, pytest.approx(1.05))  # 0.9 * [0.5, -1.5, 2] + [0.25, 1, -0.75]
    assert buffer.tolerance == pytest.approx(_documented(new, old), rel=1e-9)


def test_a_state_entry_that_is_off_reports_its_difference_and_tolerance() -> None:
    def triple(opt: optim.Optimizer) -> None:
        for buf in _buffers(opt):
            buf.mul_(3.0)

    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    w.grad = torch.tensor([0.5, -1.5, 2.0])
    report = _checked(_AfterStep([w], triple, lr=0.1, momentum=0.9), {"w": w})
    (buffer,) = report["w"].state
    # the first buffer is g: tripled, it is off by 2 * max|g| = 4; no buffer before it
    assert (buffer.verdict, buffer.max_abs_diff) == ("FAIL", 4.0)
    assert buffer.tolerance == pytest.approx(_documented(2.0), rel=1e-9)


def test_a_state_difference_equal_to_the_tolerance_is_a_match() -> None:
    # a zero gradient makes the first buffer all zeros, whose tolerance is c * tiny = 2**-123:
    # a buffer that holds exactly that much is within it (<=, as for parameters)
    def nudge(opt: optim.Optimizer) -> None:
        _buffers(opt)[0][1] = 2.0**-123

    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    w.grad = torch.zeros(3)
    report = _checked(_AfterStep([w], nudge, lr=0.1, momentum=0.9), {"w": w})
    (buffer,) = report["w"].state
    assert buffer.tolerance == 8 * F32.tiny == 2.0**-123
    assert (buffer.verdict, buffer.max_abs_diff) == ("ok", 2.0**-123)
    assert report.ok, str(report)


def test_a_users_rule_adds_its_measured_sensitivity_to_its_state_tolerance() -> None:
    # the rule is nudged by one ulp of param and grad: p - lr * g then moves by one or two ulps
    # of its largest new value (|-3.1|: ulp 2 eps), and c times that joins the bound the
    # buffer has of its own (max|g| = 100: 50 times more, so that one is there too)
    def rule(q: torch.Tensor, g: torch.Tensor, state: dict[str, Any], group: dict[str, Any]):  # type: ignore[no-untyped-def]
        return q - group["lr"] * g, {"momentum_buffer": g.clone()}

    p = nn.Parameter(torch.tensor([1.5, -3.0, 0.25]))
    p.grad = torch.tensor([0.5, 100.0, -1.0])
    opt = optim.SGD([p], lr=0.001, momentum=0.9)
    with gradscope.check_step(opt, params={"w": p}, reference=rule) as report:
        opt.step()
    assert report.ok, str(report)
    (buffer,) = report["w"].state
    assert (buffer.entry, buffer.max_abs_diff) == ("momentum_buffer", 0.0)
    extra = buffer.tolerance - _documented(100.0)
    ulp = 2 * F32.eps
    assert 8 * ulp <= extra <= 8 * (2 * ulp + F32.tiny) * (1 + 1e-6)


# ---- messages -------------------------------------------------------------------------------


def test_one_wrong_element_of_a_one_element_buffer_does_not_match() -> None:
    # one nonzero element is not "all zeros": the rule's formula is named instead
    def scale(opt: optim.Optimizer) -> None:
        for buf in _buffers(opt):
            buf.mul_(-5.0)

    b = nn.Parameter(torch.tensor([0.5]))
    b.grad = torch.tensor([1.5])
    report = _checked(_AfterStep([b], scale, lr=0.1, momentum=0.9), {"b": b})
    assert report["b"].reasons == (
        "momentum_buffer of b does not match the rule: the rule keeps momentum * buf + "
        "(1 - dampening) * g, starting as g",
    )


class _OffAdagrad(optim.Adagrad):
    """torch's Adagrad, then its ``sum`` scaled by 3: an entry without a named mistake."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        for p in self.param_groups[0]["params"]:
            self.state[p]["sum"].mul_(3.0)


def test_an_entry_without_a_known_formula_just_does_not_match() -> None:
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.tensor([0.5, 0.25])
    report = _checked(_OffAdagrad([w], lr=0.1), {"w": w})
    assert report["w"].reasons[-1] == "sum of w does not match the rule"


class _FrozenMoments(optim.Adam):
    """Adam that counts steps and moves parameters by -lr * g, and never updates its moments."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                p.add_(p.grad, alpha=-group["lr"])


def test_entries_left_alone_are_dated_each_by_its_own_history() -> None:
    # moments created at an unchecked step and never updated: at the first check they date
    # from before that step, at the second from before step 0 (the first check); each entry
    # keeps its own history
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = _FrozenMoments([w], lr=0.1)
    w.grad = torch.tensor([0.5, 0.25])
    opt.step()
    shadow = gradscope.Shadow()
    reasons = []
    for _ in range(2):
        w.grad = torch.tensor([0.5, 0.25])
        with gradscope.check_step(opt, params={"w": w}, shadow=shadow) as report:
            opt.step()
        reasons.append([r for r in report["w"].reasons if "moment" not in r])
    assert reasons[0][-2:] == [
        "exp_avg of w was not updated: it still equals the value from before this step",
        "exp_avg_sq of w was not updated: it still equals the value from before this step",
    ]
    assert reasons[1][-2:] == [
        "exp_avg of w was not updated: it still equals the value from before step 0",
        "exp_avg_sq of w was not updated: it still equals the value from before step 0",
    ]


class _ForgetsTheFirstMoment(optim.Adam):
    """torch's Adam, then exp_avg deleted from the state: the entries after it still count."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        for p in self.param_groups[0]["params"]:
            del self.state[p]["exp_avg"]


def test_every_entry_after_a_missing_one_is_still_checked() -> None:
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.tensor([0.5, 0.25])
    report = _checked(_ForgetsTheFirstMoment([w], lr=0.1), {"w": w})
    assert [(s.entry, s.verdict) for s in report["w"].state] == [
        ("exp_avg", "FAIL"),
        ("exp_avg_sq", "ok"),
        ("step", "ok"),
    ]


class _NoState(optim.SGD):
    """SGD with momentum whose buffers live in a dict of its own, never in optimizer.state."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])


def test_a_parameter_the_optimizer_keeps_no_state_for_has_every_entry_missing() -> None:
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.tensor([0.5, 0.25])
    report = _checked(_NoState([w], lr=0.1, momentum=0.9), {"w": w})
    assert report["w"].reasons == (
        "momentum_buffer of w is missing after the step (the rule keeps it): was it computed "
        "but never stored in optimizer.state[p]?",
    )


class _NoStateAdam(optim.Adam):
    """Adam's signature, a plain -lr * g step, and nothing kept in optimizer.state."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])


def test_an_adam_that_keeps_no_state_has_its_step_count_missing_too() -> None:
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.tensor([0.5, 0.25])
    report = _checked(_NoStateAdam([w], lr=0.1), {"w": w})
    missing = (
        "is missing after the step (the rule keeps it): was it computed but never stored in "
        "optimizer.state[p]?"
    )
    assert [(s.entry, s.verdict, s.reason) for s in report["w"].state] == [
        ("exp_avg", "FAIL", missing),
        ("exp_avg_sq", "FAIL", missing),
        ("step", "FAIL", missing),
    ]


class _PlainCount(optim.SGD):
    """SGD that counts its steps in a Python int past 2**24, where float32 stops counting."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        for p in self.param_groups[0]["params"]:
            self.state[p]["step"] = self.state[p].get("step", 2**24 - 1) + 1


def _counting_rule(q: torch.Tensor, g: torch.Tensor, state: dict[str, Any], group: Any) -> Any:
    return q - group["lr"] * g, {"step": state.get("step", 2**24 - 1) + 1}


def test_a_step_count_kept_as_a_python_int_is_compared_exactly() -> None:
    # 2**24 + 1 has no float32: read as float32 it would look one step behind
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = _PlainCount([w], lr=0.1)
    for _ in range(2):
        w.grad = torch.tensor([0.5, 0.25])
        with gradscope.check_step(opt, params={"w": w}, reference=_counting_rule) as report:
            opt.step()
    assert opt.state[w]["step"] == 2**24 + 1
    (step,) = report["w"].state
    assert (step.entry, step.verdict, step.max_abs_diff) == ("step", "ok", 0.0), str(report)


def test_a_state_mismatch_in_a_checked_window_of_a_large_parameter_is_explained() -> None:
    # verify_optimizer checks an eighth of a 65,536-element tensor after the first step; the
    # explanation works on that window of the parameter
    def triple(opt: optim.Optimizer) -> None:
        for buf in _buffers(opt):
            buf.mul_(3.0)

    w = nn.Parameter(torch.linspace(-1.0, 1.0, 1 << 16))
    opt = _AfterStep([w], triple, lr=0.01, momentum=0.9)
    with gradscope.verify_optimizer(opt, params={"w": w}) as verifier:
        for _ in range(2):
            w.grad = torch.cos(w.detach())
            with pytest.warns(gradscope.GradscopeWarning):
                opt.step()
    second = verifier.reports[1]
    (buffer,) = second["w"].state
    assert buffer.verdict == "FAIL"
    assert "momentum_buffer of w does not match the rule" in second["w"].reasons[-1]


# ---- spread: one number per checked parameter -----------------------------------------------


def test_spread_puts_values_at_the_present_entries_and_nan_elsewhere() -> None:
    out = spread(torch.tensor([1.0, 2.0], dtype=torch.float64), [True, False, True])
    assert out.dtype == torch.float64
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 2.0


def test_spread_stays_on_the_values_device() -> None:
    out = spread(torch.ones(2, device="meta"), [False, True, True])
    assert (out.device.type, out.shape) == ("meta", (3,))


# ---- scalar entries (step, NAdam's mu_product) ----------------------------------------------


def _nadam_step(after: Callable[[optim.Optimizer], None] = lambda opt: None) -> Any:
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.tensor([0.5, 0.25])
    opt = optim.NAdam([w], lr=0.1)
    with gradscope.check_step(opt, params={"w": w}) as report:
        opt.step()
        after(opt)
    return {s.entry: s for s in report["w"].state}, float(opt.state[w]["mu_product"])


def test_a_first_scalar_is_judged_against_its_new_value_alone() -> None:
    # no mu_product before the first step: its bound is c * (eps * |new| + tiny)
    checks, new = _nadam_step()
    assert checks["mu_product"].verdict == "ok"
    assert checks["mu_product"].tolerance == pytest.approx(_documented(abs(new)), rel=1e-9)


def test_a_step_count_two_ahead_reports_its_difference_and_half_a_step_tolerance() -> None:
    def ahead(opt: optim.Optimizer) -> None:
        for p in opt.param_groups[0]["params"]:
            opt.state[p]["step"] += 2

    checks, _ = _nadam_step(ahead)
    step = checks["step"]
    assert (step.verdict, step.max_abs_diff, step.tolerance) == ("FAIL", 2.0, 0.5)
    assert step.reason == "is 3, the rule expects 1"
