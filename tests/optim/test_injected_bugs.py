"""Hand-written optimizers with one classic bug each: caught at the first step where it
matters, and named in the report (the parameter, the state entry, the likely mistake).

Each class is what a user porting SGD or Adam writes: a subclass of the torch.optim class
(so the check uses that class's documented rule) with its own ``step()``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn, optim

import gradscope


class HandSGD(optim.SGD):
    bug = ""

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g_index, group in enumerate(self.param_groups):
            lr = group["lr"]
            if self.bug == "group lr ignored":
                lr = self.param_groups[0]["lr"]
            mu, damp, wd = group["momentum"], group["dampening"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] and self.bug != "maximize ignored" else p.grad
                if wd:
                    g = g + wd * p
                state = self.state[p]
                old = state.get("momentum_buffer")
                new = g.clone() if old is None else old * mu + (1 - damp) * g
                if self.bug != "momentum not stored" or old is None:
                    state["momentum_buffer"] = new
                used = old if self.bug == "stale momentum" and old is not None else new
                p.add_(used, alpha=-lr)
            del g_index


class HandAdam(optim.Adam):
    bug = ""

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            decoupled = isinstance(self, optim.AdamW) or group["decoupled_weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] and self.bug != "maximize ignored" else p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                if self.bug != "step not incremented":
                    state["step"] += 1
                t = float(state["step"]) + (1 if self.bug == "step not incremented" else 0)
                if wd and (not decoupled or self.bug == "coupled instead of decoupled"):
                    g = g + wd * p
                elif wd:
                    p.mul_(1 - lr * wd)
                m = state["exp_avg"] * b1 + (1 - b1) * g
                v = state["exp_avg_sq"] * b2 + (1 - b2) * g * g
                if self.bug != "moments not stored":
                    state["exp_avg"].copy_(m)
                    state["exp_avg_sq"].copy_(v)
                if self.bug == "bias correction missing":
                    m_hat, v_hat = m, v
                else:
                    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
                if self.bug == "eps inside the sqrt":
                    denom = (v_hat + eps).sqrt()
                else:
                    denom = v_hat.sqrt() + eps
                p.add_(-lr * m_hat / denom)


class HandAdamW(HandAdam, optim.AdamW):
    pass


def _run(opt: optim.Optimizer, net: nn.Module, steps: int) -> list[gradscope.StepReport]:
    torch.manual_seed(1)
    x, target = torch.randn(4, 1, 32, 32), torch.randn(4, 10)
    shadow = gradscope.Shadow()
    reports = []
    for _ in range(steps):
        opt.zero_grad()
        nn.MSELoss()(net(x), target).backward()
        with gradscope.check_step(opt, params=net, shadow=shadow) as report:
            opt.step()
        reports.append(report)
    return reports


def _first_failure(reports: list[gradscope.StepReport]) -> gradscope.StepReport:
    for report in reports:
        if not report.ok:
            return report
    raise AssertionError("the bug was never caught:\n" + str(reports[-1]))


@pytest.mark.parametrize("make", [lambda p: HandSGD(p, lr=0.01, momentum=0.9), HandAdam, HandAdamW])
def test_the_hand_written_optimizers_are_right_without_a_bug(
    lenet: gradscope.LeNet, make: Any
) -> None:
    opt = make(lenet.parameters())
    assert all(r.ok for r in _run(opt, lenet, 4)), "the hand-written step itself is wrong"


def test_momentum_not_stored(lenet: gradscope.LeNet) -> None:
    opt = HandSGD(lenet.parameters(), lr=0.01, momentum=0.9)
    opt.bug = "momentum not stored"
    reports = _run(opt, lenet, 4)
    report = _first_failure(reports)
    assert report.step == 1  # the first step where a stored buffer is read back
    sentence = (
        "momentum_buffer of fc1.weight was not updated: it still equals the value from step 0"
    )
    assert sentence in report["fc1.weight"].reasons
    assert "momentum_buffer of 10 parameters was not updated" in str(report)
    assert "the value from step 0" in str(reports[3])  # still the same old value
    assert report["fc1.weight"].state[0].entry == "momentum_buffer"
    assert report["fc1.weight"].state[0].failed


def test_stale_momentum(lenet: gradscope.LeNet) -> None:
    opt = HandSGD(lenet.parameters(), lr=0.01, momentum=0.9)
    opt.bug = "stale momentum"
    report = _first_failure(_run(opt, lenet, 3))
    assert report.step == 1 and len(report.failures) == 10
    assert "its update matches a stale momentum buffer" in report["fc1.weight"].reasons[0]
    assert report["fc1.weight"].state[0].verdict == "ok"  # the buffer itself is right


def test_adam_moments_not_stored(lenet: gradscope.LeNet) -> None:
    opt = HandAdam(lenet.parameters(), lr=1e-3)
    opt.bug = "moments not stored"
    reports = _run(opt, lenet, 3)
    report = _first_failure(reports)
    assert report.step == 0
    reasons = " ".join(report["fc1.weight"].reasons)
    assert "exp_avg of fc1.weight is still all zeros after the step" in reasons
    assert "exp_avg_sq of fc1.weight is still all zeros" in reasons
    assert "never written back to optimizer.state[p]" in str(report)
    assert "exp_avg of 10 parameters was not updated: it still equals" in str(reports[2])


def test_step_count_not_incremented(lenet: gradscope.LeNet) -> None:
    opt = HandAdam(lenet.parameters(), lr=1e-3)
    opt.bug = "step not incremented"
    reports = _run(opt, lenet, 3)
    report = _first_failure(reports)
    assert report.step == 0
    sentence = "step of fc1.weight was not incremented: it is still 0 (the rule expects 1)"
    assert sentence in report["fc1.weight"].reasons
    assert "it is still 0 (the rule expects 1)" in str(reports[2])


def test_bias_correction_missing(lenet: gradscope.LeNet) -> None:
    opt = HandAdam(lenet.parameters(), lr=1e-3)
    opt.bug = "bias correction missing"
    report = _first_failure(_run(opt, lenet, 2))
    assert report.step == 0 and len(report.failures) == 10
    assert "matches the rule without its bias corrections" in report["conv2.weight"].reasons[0]


def test_eps_inside_the_square_root(lenet: gradscope.LeNet) -> None:
    opt = HandAdam(lenet.parameters(), lr=1e-3, eps=1e-6)
    opt.bug = "eps inside the sqrt"
    report = _first_failure(_run(opt, lenet, 2))
    assert report.step == 0
    named = [p for p in report.failures if "eps inside the square root" in p.reasons[0]]
    assert len(named) >= 5, str(report)


def test_adamw_decay_applied_as_l2(lenet: gradscope.LeNet) -> None:
    opt = HandAdamW(lenet.parameters(), lr=1e-3, weight_decay=0.1)
    opt.bug = "coupled instead of decoupled"
    report = _first_failure(_run(opt, lenet, 2))
    assert report.step == 0
    assert "AdamW update rule" in report.headline()
    text = str(report)
    assert "exp_avg of 10 parameters does not match the rule" in text
    assert "weight decay was added to the gradient (L2, as Adam does) instead of" in text
    assert any(r.startswith("exp_avg of fc1.weight does not") for r in report["fc1.weight"].reasons)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: HandSGD(p, lr=0.01, momentum=0.9, maximize=True),
        lambda p: HandAdam(p, lr=1e-3, maximize=True),
    ],
)
def test_maximize_ignored(lenet: gradscope.LeNet, make: Any) -> None:
    opt = make(lenet.parameters())
    opt.bug = "maximize ignored"
    report = _first_failure(_run(opt, lenet, 2))
    assert report.step == 0
    assert (
        "which maximizes (maximize=True in param group 0): was maximize ignored?"
        in (report["fc2.weight"].reasons[0])
    )
    state = report["fc2.weight"].state
    assert any("the gradient entered with the wrong sign" in s.reason for s in state)


def test_a_param_groups_lr_ignored(lenet: gradscope.LeNet) -> None:
    head = [lenet.fc3.weight, lenet.fc3.bias]
    rest = [p for p in lenet.parameters() if all(p is not h for h in head)]
    opt = HandSGD([{"params": rest}, {"params": head, "lr": 0.1}], lr=0.01, momentum=0.9)
    opt.bug = "group lr ignored"
    report = _first_failure(_run(opt, lenet, 2))
    assert report.step == 0
    assert [p.name for p in report.failures] == ["fc3.weight", "fc3.bias"]
    assert "as if lr were 0.01 instead of 0.1" in report["fc3.weight"].reasons[0]
    assert "param group 1" in report["fc3.weight"].reasons[0]
    assert math.isclose(report["fc3.weight"].max_rel_diff or 0, 0.9, rel_tol=1e-3)


def test_verify_optimizer_catches_the_same_bug_at_the_same_step(lenet: gradscope.LeNet) -> None:
    opt = HandSGD(lenet.parameters(), lr=0.01, momentum=0.9)
    opt.bug = "momentum not stored"
    x, target = torch.randn(4, 1, 32, 32), torch.randn(4, 10)
    with (
        pytest.warns(gradscope.GradscopeWarning, match="momentum_buffer of 10 parameters was"),
        gradscope.verify_optimizer(opt, params=lenet) as v,
    ):
        for _ in range(3):
            opt.zero_grad()
            nn.MSELoss()(lenet(x), target).backward()
            opt.step()
    assert [r.ok for r in v.reports] == [True, False, False]
