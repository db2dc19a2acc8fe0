"""check_step: real torch.optim steps pass, injected bugs fail naming the right parameter."""

from __future__ import annotations

import doctest
import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_cases import OPTIMIZERS, dtypes, implementation, make_params, set_random_grads, shapes
from torch import nn, optim

import gradscope
from gradscope._optim import check as _step_check


def _backward(net: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> None:
    out = net(x)
    target = torch.zeros_like(out) if target is None else target
    nn.MSELoss()(out, target).backward()


def _hooks(opt: optim.Optimizer) -> int:
    return len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)


# ---- every real torch.optim step passes ---------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@settings(max_examples=10, deadline=None)
@given(data=st.data(), shape_list=shapes, dtype=dtypes)
def test_every_real_torch_optim_step_passes(
    name: str, data: st.DataObject, shape_list: list[tuple[int, ...]], dtype: torch.dtype
) -> None:
    cls, hyper, fused_ok = OPTIMIZERS[name]
    kwargs = data.draw(hyper) | data.draw(implementation(fused_ok))
    params = make_params(shape_list, dtype)
    opt = cls(params, **kwargs)
    for step in range(21):
        set_random_grads(params, step)
        with gradscope.check_step(opt) as report:
            opt.step()
        assert report.ok, f"{kwargs}\n{report}"
        assert report.values_checked
        for p in report.params:  # a tiny drawn lr: matched, but within the tolerance
            assert p.verdict in ("ok", "unresolved")
            assert not p.unresolved or p.max_update <= p.tolerance  # type: ignore[operator]
    assert _hooks(opt) == 0


def test_lenet_two_groups_named_from_the_module(lenet: gradscope.LeNet) -> None:
    convs = [p for n, p in lenet.named_parameters() if n.startswith("conv")]
    fcs = [p for n, p in lenet.named_parameters() if n.startswith("fc")]
    opt = optim.Adam([{"params": convs}, {"params": fcs, "lr": 1e-2}], lr=1e-3)
    x = torch.randn(4, 1, 32, 32)
    for _ in range(3):
        opt.zero_grad()
        _backward(lenet, x)
        with gradscope.check_step(opt, params=lenet) as report:
            opt.step()
        report.raise_if_failed()
    names = [p.name for p in report.params]
    assert names == [n for n, _ in lenet.named_parameters()]
    assert report["fc3.bias"].group == 1 and report["conv1.weight"].group == 0


def test_without_params_names_are_group_and_index() -> None:
    a, b = nn.Parameter(torch.randn(2)), nn.Parameter(torch.randn(3))
    opt = optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    with gradscope.check_step(opt) as report:
        opt.step()
    assert [p.name for p in report.params] == ["group0.param0", "group1.param0"]


@pytest.mark.parametrize(
    "make",
    [
        lambda p: optim.Adam(p, lr=1e-2),
        # foreach Nesterov SGD adds the momentum into p.grad in place: read grads before that
        lambda p: optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, foreach=True),
    ],
)
def test_step_with_a_closure_uses_the_gradients_it_computed(
    lenet: gradscope.LeNet, make: Callable[[Any], optim.Optimizer]
) -> None:
    opt = make(lenet.parameters())
    x = torch.randn(2, 1, 32, 32)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = lenet(x).pow(2).mean()
        loss.backward()
        return loss

    for i in range(3):
        with gradscope.check_step(opt, params=lenet) as report:
            opt.step(closure) if i % 2 else opt.step(closure=closure)
        assert report.ok, str(report)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
def test_bfloat16_sparse_and_complex_parameters() -> None:
    w = nn.Parameter(torch.randn(6, 5).bfloat16())
    opt = optim.Adam([w], lr=1e-2, foreach=False)
    emb = nn.Embedding(10, 3, sparse=True)
    sparse_opts = [optim.SGD(emb.parameters(), lr=0.1), optim.Adagrad(emb.parameters(), lr=0.1)]
    z = nn.Parameter(torch.randn(4, dtype=torch.complex64))
    copt = optim.Adam([z], lr=1e-2)
    for _ in range(5):
        w.grad = torch.randn_like(w)
        z.grad = torch.randn_like(z)
        for o in (opt, copt):
            with gradscope.check_step(o) as report:
                o.step()
            assert report.ok, str(report)
        for o in sparse_opts:
            o.zero_grad()
            emb(torch.tensor([1, 3, 3])).sum().backward()
            with gradscope.check_step(o, params=emb) as report:
                o.step()
            assert report.ok, str(report)


# ---- the tutorial's manual loop --------------------------------------------------------------


def test_tutorial_manual_loop_matches_optim_sgd(lenet: gradscope.LeNet) -> None:
    twin = gradscope.LeNet()
    twin.load_state_dict(lenet.state_dict())
    x, target = torch.randn(1, 1, 32, 32), torch.randn(10).view(1, -1)
    spec = optim.SGD(lenet.parameters(), lr=0.01)  # the update the manual loop should make
    real = optim.SGD(twin.parameters(), lr=0.01)
    for _ in range(20):
        lenet.zero_grad()
        _backward(lenet, x, target)
        with gradscope.check_step(spec, params=lenet, manual=True) as report:
            for f in lenet.parameters():
                f.data.sub_(f.grad.data * 0.01)
        assert report.ok, str(report)
        real.zero_grad()
        _backward(twin, x, target)
        real.step()
    for (name, a), b in zip(lenet.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ---- injected bugs -------------------------------------------------------------------------


class _WrongLrForGroupOne(optim.SGD):
    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g, group in enumerate(self.param_groups):
            lr = group["lr"] * (10 if g == 1 else 1)
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)


class _SkipsLastParameter(optim.SGD):
    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        for p in params[:-1]:
            p.add_(p.grad, alpha=-self.param_groups[0]["lr"])


class _StepsTwice(optim.Adam):
    def step(self, closure: Any = None) -> Any:
        super().step(closure)
        return super().step(closure)


def _lenet_step(
    net: gradscope.LeNet, opt: optim.Optimizer, body: Callable[[], None] | None = None
) -> gradscope.StepReport:
    opt.zero_grad()
    _backward(net, torch.randn(2, 1, 32, 32))
    with gradscope.check_step(opt, params=net) as report:
        (body or opt.step)()
    return report


def _groups(net: gradscope.LeNet) -> list[dict[str, Any]]:
    head = [net.fc3.weight, net.fc3.bias]
    rest = [p for p in net.parameters() if all(p is not h for h in head)]
    return [{"params": rest}, {"params": head}]


def test_wrong_lr_for_one_group_names_that_groups_parameters(lenet: gradscope.LeNet) -> None:
    report = _lenet_step(lenet, _WrongLrForGroupOne(_groups(lenet), lr=0.01))
    assert [p.name for p in report.failures] == ["fc3.weight", "fc3.bias"]
    assert report["fc3.weight"].max_rel_diff == pytest.approx(9.0, rel=1e-3)
    assert "10 times as far" in report["fc3.weight"].reasons[0]
    assert "as if lr were 0.1 instead of 0.01" in report["fc3.weight"].reasons[0]
    assert "_WrongLrForGroupOne subclasses it" in str(report)


def test_a_step_that_skips_one_parameter(lenet: gradscope.LeNet) -> None:
    report = _lenet_step(lenet, _SkipsLastParameter(lenet.parameters(), lr=0.01))
    assert [p.name for p in report.failures] == ["fc3.bias"]
    assert not report["fc3.bias"].changed
    assert "did not move" in report["fc3.bias"].reasons[0]


def test_a_step_applied_twice_inside_the_optimizer(lenet: gradscope.LeNet) -> None:
    report = _lenet_step(lenet, _StepsTwice(lenet.parameters(), lr=1e-3))
    assert len(report.failures) == 10
    assert all("twice as far" in p.reasons[0] for p in report.failures)


def test_step_called_twice_in_one_block_is_a_problem(lenet: gradscope.LeNet) -> None:
    opt = optim.SGD(lenet.parameters(), lr=0.01)

    def twice() -> None:
        opt.step()
        opt.step()

    report = _lenet_step(lenet, opt, twice)
    assert not report.ok
    assert any("ran 2 times" in text for text in report.problems)


def test_manual_loop_with_the_sign_flipped(lenet: gradscope.LeNet) -> None:
    opt = optim.SGD(lenet.parameters(), lr=0.01)
    _backward(lenet, torch.randn(1, 1, 32, 32))
    with gradscope.check_step(opt, params=lenet, manual=True) as report:
        for f in lenet.parameters():
            f.data.add_(f.grad.data * 0.01)
    assert len(report.failures) == 10
    with pytest.raises(gradscope.StepMismatch) as caught:
        report.raise_if_failed()
    text = str(caught.value)
    assert "sign flip" in text and text.count("(param group 0)") == 10  # every one listed


def test_a_parameter_missing_from_the_optimizer(lenet: gradscope.LeNet) -> None:
    opt = optim.SGD([p for n, p in lenet.named_parameters() if n != "fc3.weight"], lr=0.01)
    report = _lenet_step(lenet, opt)
    assert [p.name for p in report.failures] == ["fc3.weight"]
    assert report["fc3.weight"].group is None
    assert "in no param group: it will never be updated" in str(report)
    assert "net.parameters()" in report["fc3.weight"].reasons[0]


def test_lr_zero_is_a_note_and_passes_when_nothing_moved(lenet: gradscope.LeNet) -> None:
    opt = optim.SGD(_groups(lenet), lr=0.01, momentum=0.9)
    opt.param_groups[1]["lr"] = 0.0
    report = _lenet_step(lenet, opt)
    assert report.ok, str(report)
    assert any("lr is 0 in param group 1" in n for n in report.notes)
    assert not report["fc3.weight"].changed and report["fc1.weight"].changed


class _MovesDespiteZeroLr(optim.SGD):
    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-max(group["lr"], 1e-3))  # a floor on lr: a bug


def test_parameters_moved_although_lr_is_0_fail(lenet: gradscope.LeNet) -> None:
    opt = _MovesDespiteZeroLr(_groups(lenet), lr=0.01)
    opt.param_groups[1]["lr"] = 0.0
    report = _lenet_step(lenet, opt)
    assert [p.name for p in report.failures] == ["fc3.weight", "fc3.bias"]
    assert "where the reference does not move it" in report.failures[0].reasons[0]
    structural = _MovesDespiteZeroLr(_groups(lenet), lr=0.01)
    structural.param_groups[1]["lr"] = 0.0
    lenet.zero_grad()
    _backward(lenet, torch.randn(2, 1, 32, 32))
    with gradscope.check_step(structural, params=lenet, values=False) as report:
        structural.step()
    assert [p.name for p in report.failures] == ["fc3.weight", "fc3.bias"]
    assert "it moved although lr is 0 in param group 1" in report.failures[0].reasons[0]


def _warmup(steps: int) -> Callable[[int], float]:
    # transformers.get_linear_schedule_with_warmup's lambda (warmup, then linear decay to 0)
    return lambda step: step / steps if step < steps else max(0.0, (20 - step) / (20 - steps))


@pytest.mark.parametrize(
    "schedule",
    [
        lambda o: optim.lr_scheduler.LambdaLR(o, _warmup(3)),
        lambda o: optim.lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=0.0),
        lambda o: optim.lr_scheduler.OneCycleLR(o, max_lr=0.01, total_steps=25),
    ],
)
@pytest.mark.parametrize(
    "make",
    [
        lambda p: optim.SGD(p, lr=0.01, momentum=0.9),
        lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
        lambda p: optim.RAdam(p, lr=0.01),
    ],
)
def test_warmup_and_schedules_that_reach_lr_0_pass(
    lenet: gradscope.LeNet, make: Callable[[Any], optim.Optimizer], schedule: Any
) -> None:
    opt = make(lenet.parameters())
    sched = schedule(opt)
    shadow = gradscope.Shadow()
    zero_steps = 0
    for _ in range(20):
        opt.zero_grad()
        _backward(lenet, torch.randn(2, 1, 32, 32))
        with gradscope.check_step(opt, params=lenet, shadow=shadow) as report:
            opt.step()
        assert report.ok, str(report)
        zero_steps += any("lr is 0" in n for n in report.notes)
        sched.step()
    assert zero_steps >= 1 or isinstance(sched, optim.lr_scheduler.OneCycleLR)


# ---- structural checks -----------------------------------------------------------------------


def test_frozen_layer_in_a_group_is_skipped_not_failed(lenet: gradscope.LeNet) -> None:
    lenet.conv1.requires_grad_(False)
    report = _lenet_step(lenet, optim.SGD(lenet.parameters(), lr=0.01))
    assert report.ok
    assert report["conv1.weight"].verdict == "skipped"
    assert any("conv1.weight, conv1.bias" in n for n in report.notes)


def test_parameter_changed_without_a_gradient(lenet: gradscope.LeNet) -> None:
    lenet.conv1.requires_grad_(False)
    opt = optim.SGD(lenet.parameters(), lr=0.01)

    def decay_everything() -> None:
        opt.step()
        with torch.no_grad():
            lenet.conv1.weight.mul_(0.99)

    report = _lenet_step(lenet, opt, decay_everything)
    assert [p.name for p in report.failures] == ["conv1.weight"]
    assert "changed although its .grad was None" in report.failures[0].reasons[0]


def test_step_before_backward(lenet: gradscope.LeNet) -> None:
    opt = optim.Adam(lenet.parameters())
    with gradscope.check_step(opt, params=lenet) as report:
        opt.step()
    assert not report.ok
    assert "before loss.backward()" in report.problems[0]
    assert "before loss.backward()" in str(report)


@pytest.mark.parametrize("cls", [optim.LBFGS, optim.Adafactor])
def test_an_optimizer_without_a_reference_is_an_error_not_a_pass(
    lenet: gradscope.LeNet, cls: type[optim.Optimizer]
) -> None:
    opt = cls(lenet.parameters())
    for function in (gradscope.check_step, gradscope.verify_optimizer):
        with pytest.raises(gradscope.GradscopeError) as caught:
            function(opt, params=lenet)  # type: ignore[operator]
        text = str(caught.value)
        assert f"no built-in reference rule for {cls.__name__}" in text
        assert "SGD, " in text and "NAdam" in text and "Rprop" in text  # what is built in
        assert "reference=" in text and "values=False" in text and "Lion" in text
    assert _hooks(opt) == 0


def test_values_false_says_plainly_that_only_structure_was_checked(
    lenet: gradscope.LeNet,
) -> None:
    opt = optim.Adafactor([p for n, p in lenet.named_parameters() if n != "fc1.bias"])
    lenet.zero_grad()
    _backward(lenet, torch.randn(2, 1, 32, 32))
    with gradscope.check_step(opt, params=lenet, values=False) as report:
        opt.step()
    assert not report.values_checked
    assert "structural checks only (values=False), values NOT checked" in report.headline()
    assert "checks run: a gradient in no param group" in str(report)
    assert {p.verdict for p in report.params if p.name != "fc1.bias"} == {"unchecked"}
    assert [p.name for p in report.failures] == ["fc1.bias"]  # in no group: still caught


def test_user_reference_for_a_custom_optimizer() -> None:
    class SignSGD(optim.Optimizer):
        def __init__(self, params: Any, lr: float) -> None:
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure: Any = None) -> None:
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(p.grad.sign(), alpha=-group["lr"])

    def sign_rule(param: Any, grad: Any, state: Any, group: Any) -> torch.Tensor:
        return param - group["lr"] * grad.sign()

    net = nn.Linear(4, 2)
    opt = SignSGD(net.parameters(), lr=0.1)
    _backward(net, torch.randn(3, 4))
    with gradscope.check_step(opt, params=net, reference=sign_rule) as report:
        opt.step()
    assert report.ok and "sign_rule" in str(report)
    opt.zero_grad()
    _backward(net, torch.randn(3, 4))
    with gradscope.check_step(opt, params=net, reference=lambda p, g, s, gr: p - g) as report:
        opt.step()
    assert [p.name for p in report.failures] == ["weight", "bias"]


# ---- bad input -----------------------------------------------------------------------------


def test_not_an_optimizer(lenet: gradscope.LeNet) -> None:
    with pytest.raises(gradscope.GradscopeError, match="that is the model"):
        gradscope.check_step(lenet)  # type: ignore[arg-type]
    with pytest.raises(gradscope.GradscopeError, match=r"takes a torch\.optim\.Optimizer \(or"):
        gradscope.check_step("sgd")  # type: ignore[arg-type]


def test_optimizer_with_no_parameters() -> None:
    with pytest.raises(gradscope.GradscopeError, match="no parameters in any param group"):
        gradscope.check_step(optim.SGD([{"params": []}], lr=0.1))


def test_body_that_never_steps_is_an_error_not_a_success(lenet: gradscope.LeNet) -> None:
    opt = optim.SGD(lenet.parameters(), lr=0.1)
    with (
        pytest.raises(gradscope.GradscopeError, match=r"never called SGD.step\(\)"),
        gradscope.check_step(opt) as report,
    ):
        pass
    with pytest.raises(gradscope.GradscopeError, match="read it after the block"):
        _ = report.ok
    assert _hooks(opt) == 0


def test_manual_block_that_calls_step(lenet: gradscope.LeNet) -> None:
    opt = optim.SGD(lenet.parameters(), lr=0.1)
    _backward(lenet, torch.randn(1, 1, 32, 32))
    with (
        pytest.raises(gradscope.GradscopeError, match="drop manual=True"),
        gradscope.check_step(opt, manual=True),
    ):
        opt.step()


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        (lambda p, g, s, gr: 1 / 0, "raised ZeroDivisionError"),
        (lambda p, g, s, gr: (p - g).sum(), r"shape \(\) .* has shape \(2, 3\)"),
        (lambda p, g, s, gr: 3.0, "returned float 3.0"),
        (lambda p, g, s, gr: torch.ones(2, 3, dtype=torch.long), "torch.int64"),
    ],
)
def test_bad_reference(rule: Callable[..., Any], match: str) -> None:
    w = nn.Parameter(torch.randn(2, 3))
    opt = optim.SGD([w], lr=0.1)
    w.grad = torch.randn(2, 3)
    with (
        pytest.raises(gradscope.GradscopeError, match=match),
        gradscope.check_step(opt, params={"w": w}, reference=rule),
    ):
        opt.step()
    assert _hooks(opt) == 0


def test_reference_must_be_callable_and_params_a_module_or_mapping() -> None:
    opt = optim.SGD([nn.Parameter(torch.randn(2))], lr=0.1)
    with pytest.raises(gradscope.GradscopeError, match="takes a function"):
        gradscope.check_step(opt, reference=0.1)  # type: ignore[arg-type]
    with pytest.raises(gradscope.GradscopeError, match=r"params= takes an nn\.Module"):
        gradscope.check_step(opt, params=torch.ones(2))  # type: ignore[arg-type]


# ---- hooks -----------------------------------------------------------------------------------


def test_hooks_removed_and_exception_kept_when_the_body_raises(lenet: gradscope.LeNet) -> None:
    opt = optim.SGD(lenet.parameters(), lr=0.1)
    with pytest.raises(KeyError, match="boom"), gradscope.check_step(opt, params=lenet):
        raise KeyError("boom")
    assert _hooks(opt) == 0


def test_the_report_keeps_no_model_or_optimizer_alive() -> None:
    net = gradscope.LeNet()
    opt = optim.SGD(net.parameters(), lr=0.1)
    _backward(net, torch.randn(1, 1, 32, 32))
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    refs = [weakref.ref(net), weakref.ref(opt)]
    del net, opt
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert report.ok


def test_docstring_example_runs() -> None:
    assert doctest.testmod(_step_check).failed == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: optim.Adam(p, lr=0.1),
        lambda p: optim.RMSprop(p, lr=0.1, centered=True),
    ],
)
def test_a_non_finite_gradient_the_rule_also_follows_is_a_match(
    make: Callable[[Any], optim.Optimizer],
) -> None:
    p = nn.Parameter(torch.ones(4))
    opt = make([p])
    shadow = gradscope.Shadow()
    for grad in ([1.0, 2.0, 3.0, 4.0], [float("inf"), 1.0, float("nan"), -float("inf")]):
        p.grad = torch.tensor(grad)
        with gradscope.check_step(opt, shadow=shadow) as report:
            opt.step()
        assert report.ok, str(report)
    assert not bool(torch.isfinite(p).all())  # it did go non-finite, as the rule says
    with torch.no_grad():
        p.fill_(1.0)
    opt = make([p])
    p.grad = torch.tensor([float("inf"), 1.0, 1.0, 1.0])
    with gradscope.check_step(opt) as report:
        opt.step()
        with torch.no_grad():
            p[1] = float("nan")  # not what the rule says
    assert not report.ok
