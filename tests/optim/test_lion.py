"""Writing ``reference=`` for a third-party optimizer: the README's Lion example, run as written.

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") has no torch.optim
class; the optimizer below is written the way the ``lion-pytorch`` package writes it. The
README's reference (a few lines) must pass a real run, state included, and catch a Lion whose
moment update is in the wrong order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn, optim

import gradscope

README = Path(__file__).resolve().parents[2] / "README.md"


class Lion(optim.Optimizer):
    """A third-party Lion: sign of an interpolated momentum, decoupled weight decay."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        order_bug: bool = False,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})
        self.order_bug = order_bug

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                if self.order_bug:  # moment updated first: the step uses beta2's average
                    exp_avg.lerp_(p.grad, 1 - beta2)
                    p.add_(exp_avg.sign(), alpha=-group["lr"])
                else:
                    update = exp_avg.clone().lerp_(p.grad, 1 - beta1).sign_()
                    p.add_(update, alpha=-group["lr"])
                    exp_avg.lerp_(p.grad, 1 - beta2)
        return None


def _readme_lion() -> Callable[..., Any]:
    text = README.read_text()
    block = re.search(r"### Checking any optimizer.*?```python\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README lost its Lion example"
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    return namespace["lion"]  # type: ignore[no-any-return]


def _train(opt: optim.Optimizer, net: nn.Module, steps: int) -> None:
    x, target = torch.randn(8, 1, 32, 32), torch.randn(8, 10)
    for _ in range(steps):
        opt.zero_grad()
        nn.MSELoss()(net(x), target).backward()
        opt.step()


def test_the_readme_lion_reference_passes_a_real_run_state_included(
    lenet: gradscope.LeNet,
) -> None:
    lion = _readme_lion()
    opt = Lion(lenet.parameters(), lr=1e-4, weight_decay=0.1)
    with gradscope.verify_optimizer(opt, params=lenet, reference=lion, on_mismatch="raise") as v:
        _train(opt, lenet, 30)
    assert len(v.reports) == 30 and v.ok
    report = v.reports[-1]
    assert report.state_checked and "lion" in report.headline()
    assert {s.entry for p in report.params for s in p.state} == {"exp_avg"}


def test_the_readme_lion_reference_catches_the_moment_updated_too_early(
    lenet: gradscope.LeNet,
) -> None:
    lion = _readme_lion()
    opt = Lion(lenet.parameters(), lr=1e-4, order_bug=True)
    with (
        pytest.warns(gradscope.GradscopeWarning),
        gradscope.verify_optimizer(opt, params=lenet, reference=lion) as v,
    ):
        _train(opt, lenet, 3)
    first = v.failures[0]
    assert first.step == 1  # at step 0 both orders give sign(grad): its first effective step
    assert any("its update" in r or "moved" in r for r in first["fc1.weight"].reasons)


def test_a_reference_that_returns_only_the_parameter_checks_no_state(
    lenet: gradscope.LeNet,
) -> None:
    lion = _readme_lion()
    opt = Lion(lenet.parameters(), lr=1e-4)

    def params_only(param: Any, grad: Any, state: Any, group: Any) -> torch.Tensor:
        new_param, _ = lion(param, grad, state, group)
        return new_param  # type: ignore[no-any-return]

    _train(opt, lenet, 1)
    opt.zero_grad()
    nn.MSELoss()(lenet(torch.randn(2, 1, 32, 32)), torch.randn(2, 10)).backward()
    with gradscope.check_step(opt, params=lenet, reference=params_only) as report:
        opt.step()
    assert report.ok and not report.state_checked
    assert "(parameters only)" in report.headline()
