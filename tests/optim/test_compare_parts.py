"""The step comparison's verdicts one by one: structural checks, skipped and outside parameters.

Every expectation is a fact about the step that the test itself makes (it moves a parameter or
not, by a known amount) or a literal message, never a number computed by gradscope.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn, optim

import gradscope


def _net() -> nn.Linear:
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]]))
        net.bias.copy_(torch.tensor([0.1, -0.2]))
    return net


def _grads(net: nn.Module) -> None:
    net.zero_grad()
    net(torch.tensor([[1.0, 2.0, -1.0]])).sum().backward()


def _structural(
    opt: optim.Optimizer, net: nn.Module, after: Callable[[], None] = lambda: None
) -> gradscope.StepReport:
    with gradscope.check_step(opt, params=net, values=False) as report:
        opt.step()
        with torch.no_grad():
            after()
    return report


# ---- structural checks (values=False) ------------------------------------------------------


def test_structural_a_parameter_left_alone_is_unchanged_and_unchecked() -> None:
    net = _net()
    _grads(net)
    opt = optim.SGD(net.parameters(), lr=0.0)
    report = _structural(opt, net)
    assert report.ok, str(report)
    assert [(p.name, p.changed, p.verdict, p.reasons) for p in report.params] == [
        ("weight", False, "unchecked", ()),
        ("bias", False, "unchecked", ()),
    ]


def test_structural_a_nan_that_stays_nan_is_not_a_change() -> None:
    net = _net()
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    _grads(net)
    report = _structural(optim.SGD(net.parameters(), lr=0.0), net)
    assert report.ok, str(report)
    assert not report["weight"].changed


def test_structural_moved_parameters_are_changed() -> None:
    net = _net()
    _grads(net)
    report = _structural(optim.SGD(net.parameters(), lr=0.1), net)
    assert report.ok, str(report)
    assert [(p.name, p.changed, p.verdict) for p in report.params] == [
        ("weight", True, "unchecked"),
        ("bias", True, "unchecked"),
    ]


def test_structural_a_parameter_given_a_new_shape_has_changed() -> None:
    net = _net()
    _grads(net)
    opt = optim.SGD(net.parameters(), lr=0.0)

    def reshape() -> None:
        net.bias.data = torch.tensor([0.1, -0.2, 0.0])  # same leading values, one more

    report = _structural(opt, net, reshape)
    assert report["bias"].changed and not report["weight"].changed
    assert report["bias"].reasons == (
        "it moved although lr is 0 in param group 0: something other than the lr-scaled step "
        "moved it",
    )


def _complex() -> dict[str, torch.Tensor]:
    params = {
        "weight": torch.tensor([[1 + 2j, -1j], [0.5, 3 - 1j]], requires_grad=True),
        "bias": torch.tensor([1j, -2.0 + 0j], requires_grad=True),
    }
    for p in params.values():
        p.grad = torch.full_like(p, 0.5 - 0.5j)
    return params


@pytest.mark.parametrize("lr", [0.0, 0.1])
def test_structural_complex_parameters(lr: float) -> None:
    params = _complex()
    opt = optim.SGD(params.values(), lr=lr)
    with gradscope.check_step(opt, params=params, values=False) as report:
        opt.step()
    assert report.ok, str(report)
    assert [p.changed for p in report.params] == [lr > 0, lr > 0]


def test_structural_a_complex_nan_whose_other_part_moved_has_changed() -> None:
    params = _complex()
    with torch.no_grad():
        params["weight"][0, 0] = complex(float("nan"), 1.0)
    opt = optim.SGD(params.values(), lr=0.0)
    with gradscope.check_step(opt, params=params, values=False) as report:
        opt.step()
        with torch.no_grad():
            params["weight"][0, 0] = complex(float("nan"), 2.0)  # only its imaginary part
    assert report["weight"].changed and not report["bias"].changed
    assert report["weight"].verdict == "FAIL"


def test_structural_a_parameter_the_step_skipped_fails_with_its_lr() -> None:
    net = _net()
    _grads(net)
    opt = optim.SGD(net.parameters(), lr=0.25)

    def undo_bias() -> None:
        net.bias.copy_(torch.tensor([0.1, -0.2]))

    report = _structural(opt, net, undo_bias)
    assert [p.name for p in report.failures] == ["bias"]
    assert report["bias"].reasons == (
        "it did not change although its gradient is non-zero and lr=0.25: did the step skip it?",
    )
    assert not report["bias"].changed and report["bias"].group == 0


def test_structural_a_zero_gradient_may_leave_a_parameter_alone() -> None:
    net = _net()
    _grads(net)
    net.bias.grad.zero_()  # type: ignore[union-attr]
    opt = optim.SGD(net.parameters(), lr=0.25)
    report = _structural(opt, net)
    assert report.ok, str(report)
    assert not report["bias"].changed and report["bias"].verdict == "unchecked"


# ---- parameters without a gradient (skipped) -------------------------------------------------


def test_a_parameter_without_a_gradient_left_alone_is_skipped() -> None:
    net = _net()
    _grads(net)
    net.bias.grad = None
    opt = optim.SGD(net.parameters(), lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    assert report.ok, str(report)
    bias = report["bias"]
    assert (bias.changed, bias.verdict, bias.reasons, bias.group, bias.optimizer) == (
        False,
        "skipped",
        (),
        0,
        0,
    )
    assert report.notes == [
        "1 parameter(s) in param groups had no gradient and were skipped (frozen, or unused in "
        "the forward pass?): bias"
    ]


def test_a_parameter_without_a_gradient_that_moved_fails() -> None:
    net = _net()
    _grads(net)
    net.bias.grad = None
    opt = optim.SGD(net.parameters(), lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
        with torch.no_grad():
            net.bias.mul_(0.5)
    bias = report["bias"]
    assert (bias.changed, bias.verdict, bias.group, bias.optimizer) == (True, "FAIL", 0, 0)
    assert bias.reasons == (
        "it changed although its .grad was None: something other than its gradient moved it "
        "(a custom step that decays every parameter? a second optimizer?)",
    )
    assert [p.name for p in report.failures] == ["bias"]


def test_many_skipped_parameters_are_named_six_at_most() -> None:
    nets = nn.ModuleList(nn.Linear(1, 1) for _ in range(5))
    opt = optim.SGD(nets.parameters(), lr=0.1)
    nets[0](torch.ones(1, 1)).sum().backward()  # only the first has gradients
    with gradscope.check_step(opt, params=nets) as report:
        opt.step()
    assert report.ok, str(report)
    assert report.notes == [
        "8 parameter(s) in param groups had no gradient and were skipped (frozen, or unused in "
        "the forward pass?): 1.weight, 1.bias, 2.weight, 2.bias, 3.weight, 3.bias and 2 more"
    ]


def test_six_skipped_parameters_are_all_named() -> None:
    nets = nn.ModuleList(nn.Linear(1, 1) for _ in range(4))
    opt = optim.SGD(nets.parameters(), lr=0.1)
    nets[0](torch.ones(1, 1)).sum().backward()
    with gradscope.check_step(opt, params=nets) as report:
        opt.step()
    assert report.notes[0].endswith(": 1.weight, 1.bias, 2.weight, 2.bias, 3.weight, 3.bias")


# ---- parameters in no param group (outside) --------------------------------------------------

_NO_GROUP = (
    "it has a gradient but is in no param group: it will never be updated; pass all the "
    "model's parameters to the optimizer (e.g. torch.optim.SGD(net.parameters(), ...)) or add "
    "it with optimizer.add_param_group({'params': [...]}); if another optimizer updates it "
    "(SparseAdam for embeddings), check both: check_step([sparse_opt, dense_opt], ...)"
)


@pytest.mark.parametrize("moved", [False, True])
def test_a_parameter_in_no_group_fails_and_says_whether_it_moved(moved: bool) -> None:
    net = _net()
    _grads(net)
    opt = optim.SGD([net.weight], lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
        if moved:
            with torch.no_grad():
                net.bias.add_(1.0)
    bias = report["bias"]
    assert (bias.changed, bias.verdict, bias.group, bias.reasons) == (
        moved,
        "FAIL",
        None,
        (_NO_GROUP,),
    )
    assert [p.name for p in report.params] == ["weight", "bias"]  # outside ones come last


def test_a_parameter_in_none_of_several_optimizers_names_them() -> None:
    nets = nn.ModuleList([nn.Linear(2, 1), nn.Linear(2, 1), nn.Linear(2, 1)])
    sum(n(torch.ones(1, 2)).sum() for n in nets).backward()  # type: ignore[misc]
    first, second = optim.SGD(nets[0].parameters(), lr=0.1), optim.Adam(nets[1].parameters())
    with gradscope.check_step([first, second], params=nets) as report:
        first.step()
        second.step()
    assert [p.name for p in report.failures] == ["2.weight", "2.bias"]
    assert report["2.weight"].reasons == (
        "it has a gradient but is in none of the optimizers checked (SGD, Adam): it will never "
        "be updated; add it to one of them",
    )
    assert not report["2.weight"].changed
    optimizer_of = {p.name: p.optimizer for p in report.params if not p.failed}
    assert optimizer_of == {"0.weight": 0, "0.bias": 0, "1.weight": 1, "1.bias": 1}
    with gradscope.check_step([first, second], params=nets, values=False) as report:
        first.step()
        second.step()
    optimizer_of = {p.name: p.optimizer for p in report.params if not p.failed}
    assert optimizer_of == {"0.weight": 0, "0.bias": 0, "1.weight": 1, "1.bias": 1}
    sum(n(torch.ones(1, 2)).sum() for n in nets[:1]).backward()  # type: ignore[misc]
    second.zero_grad()  # now 1.weight and 1.bias have no gradient: skipped, in optimizer 1
    with gradscope.check_step([first, second], params=nets) as report:
        first.step()
        second.step()
    assert [(p.name, p.optimizer) for p in report.params if p.verdict == "skipped"] == [
        ("1.weight", 1),
        ("1.bias", 1),
    ]


# ---- the value comparison: its numbers against torch.optim stepping a copy --------------------


def _documented_tolerance(before: torch.Tensor, update: torch.Tensor) -> float:
    """tolerance.py's documented rule written out: 8 * (eps * (max|p| + max|update|) + tiny)."""
    info = torch.finfo(before.dtype)
    scale = float(before.abs().max()) + float(update.abs().max())
    return 8.0 * (info.eps * scale + info.tiny)


class _OffByOneElement(optim.SGD):
    """torch's SGD, then one element of the first parameter nudged by ``delta``: a bug."""

    def __init__(self, params: object, delta: float, **kwargs: float) -> None:
        super().__init__(params, **kwargs)  # type: ignore[arg-type]
        self.delta = delta

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        self.param_groups[0]["params"][0].view(-1)[1] += self.delta


def _torch_sgd_update(net: nn.Module, **kwargs: float) -> dict[str, torch.Tensor]:
    """The update torch.optim.SGD makes, stepping a copy of ``net`` (the oracle)."""
    copy = _net()
    copy.load_state_dict(net.state_dict())
    for mine, theirs in zip(copy.parameters(), net.parameters(), strict=True):
        mine.grad = None if theirs.grad is None else theirs.grad.clone()
    befores = {n: p.detach().clone() for n, p in copy.named_parameters()}
    opt = optim.SGD(copy.parameters(), **kwargs)
    opt.step()
    return {n: p.detach() - befores[n] for n, p in copy.named_parameters()}


def test_a_wrong_element_is_measured_against_torchs_own_step() -> None:
    net = _net()
    _grads(net)
    befores = {n: p.detach().clone() for n, p in net.named_parameters()}
    updates = _torch_sgd_update(net, lr=0.1)
    opt = _OffByOneElement(net.parameters(), delta=0.5, lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    weight, bias = report["weight"], report["bias"]
    assert [p.name for p in report.failures] == ["weight"]
    assert weight.changed and bias.changed
    assert weight.max_abs_diff == pytest.approx(0.5, rel=1e-6)
    biggest = float(updates["weight"].abs().max())  # 0.1 * 2 = 0.2: the x of 2.0
    assert biggest == pytest.approx(0.2)
    assert weight.max_rel_diff == pytest.approx(0.5 / biggest, rel=1e-6)
    want = _documented_tolerance(befores["weight"], updates["weight"])
    assert weight.tolerance == pytest.approx(want, rel=1e-6)
    assert weight.verdict == "FAIL" and len(weight.reasons) == 1
    # the correct parameter: exact match, its own tolerance, relative to its own update
    assert bias.max_abs_diff == 0.0 and bias.max_rel_diff == 0.0
    assert bias.tolerance == pytest.approx(
        _documented_tolerance(befores["bias"], updates["bias"]), rel=1e-6
    )
    assert bias.reasons == () and bias.verdict == "ok"


def test_a_wrong_element_next_to_a_nan_the_rule_predicts() -> None:
    net = _net()
    _grads(net)
    net.weight.grad[0, 0] = float("nan")  # type: ignore[index]
    opt = _OffByOneElement(net.parameters(), delta=0.5, lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    assert torch.isnan(net.weight[0, 0])  # the NaN the rule predicts is no mismatch
    assert [p.name for p in report.failures] == ["weight"]
    assert report["weight"].max_abs_diff == pytest.approx(0.5, rel=1e-6)


def test_a_parameter_moved_although_its_update_is_zero_is_infinitely_off() -> None:
    net = _net()
    _grads(net)
    net.weight.grad.zero_()  # type: ignore[union-attr]
    opt = _OffByOneElement(net.parameters(), delta=0.5, lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    weight = report["weight"]
    assert weight.failed and weight.changed
    assert weight.max_abs_diff == pytest.approx(0.5, rel=1e-6)
    assert weight.max_rel_diff == float("inf")


def test_a_zero_update_that_was_made_is_a_match_and_no_move() -> None:
    net = _net()
    _grads(net)
    net.weight.grad.zero_()  # type: ignore[union-attr]
    opt = optim.SGD(net.parameters(), lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    weight = report["weight"]
    assert report.ok, str(report)
    assert (weight.max_abs_diff, weight.max_rel_diff, weight.changed) == (0.0, 0.0, False)
    assert report["bias"].changed


def test_without_shadow_no_state_is_compared() -> None:
    net = _net()
    _grads(net)
    opt = optim.Adam(net.parameters(), lr=0.1)
    with gradscope.check_step(opt, params=net, shadow=False) as report:
        opt.step()
    assert report.ok, str(report)
    assert not report.state_checked
    assert [p.state for p in report.params] == [(), ()]
    with gradscope.check_step(opt, params=net, shadow=True) as report:
        opt.step()
    assert report.ok and report.state_checked
    assert [[s.entry for s in p.state] for p in report.params] == [
        ["exp_avg", "exp_avg_sq", "step"]
    ] * 2


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ([1 + 2j, -1j], [1.0, 0.0]),  # complex -> real: view_as_real crashed on the real one
        ([1.0, 0.0], [1 + 0j, 0j]),  # real -> complex, the same values
        ([1.0, 0.0], torch.tensor([1.0, 0.0], dtype=torch.float64)),  # same values, float64
    ],
)
def test_structural_a_parameter_given_a_new_dtype_has_changed(old: list[Any], new: Any) -> None:
    p = torch.tensor(old, requires_grad=True)
    p.grad = torch.ones_like(p)
    opt = optim.SGD([p], lr=0.0)
    with gradscope.check_step(opt, params={"w": p}, values=False) as report:
        opt.step()
        p.data = torch.as_tensor(new)
    assert report["w"].changed
    assert report["w"].reasons == (
        "it moved although lr is 0 in param group 0: something other than the lr-scaled step "
        "moved it",
    )


def test_the_l2_sensitivity_is_added_to_the_tolerance() -> None:
    # Adam with L2 decay: the tolerance is the documented bound plus c * eps * max(error), the
    # error M / denom * scale worked out here in numpy for a first step (see tolerance.py)
    net = _net()
    _grads(net)
    lr, beta1, beta2, eps, wd = 0.1, 0.9, 0.999, 1e-3, 0.5
    p, g = net.weight.detach().double().numpy(), net.weight.grad.double().numpy()  # type: ignore[union-attr]
    d, big_m = g + wd * p, np.abs(g) + wd * np.abs(p)
    m, v = (1 - beta1) * d, (1 - beta2) * d * d
    denom = np.sqrt(v / (1 - beta2)) + eps
    scale = np.abs(m / denom) * lr / (1 - beta1) + lr * (1 - beta1) / (1 - beta1)
    error = float((big_m / denom * scale).max())
    before = net.weight.detach().clone()
    copy = _net()
    copy.load_state_dict(net.state_dict())
    copy.weight.grad = net.weight.grad.clone()  # type: ignore[union-attr]
    kwargs = {"lr": lr, "betas": (beta1, beta2), "eps": eps, "weight_decay": wd}
    optim.Adam([copy.weight], **kwargs).step()  # type: ignore[arg-type]
    update = copy.weight.detach() - before
    opt = optim.Adam(net.parameters(), **kwargs)  # type: ignore[arg-type]
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    assert report.ok, str(report)
    info = torch.finfo(torch.float32)
    want = _documented_tolerance(before, update) + 8.0 * (info.eps * error + info.tiny)
    assert report["weight"].tolerance == pytest.approx(want, rel=1e-5)


def test_a_user_reference_is_given_its_measured_sensitivity() -> None:
    # a user's rule is nudged by one ulp of param and grad; p - lr * g then moves by one or two
    # ulps of the largest new value (|-3.2|: ulp 2 eps), which adds c * that to the tolerance
    p = nn.Parameter(torch.tensor([1.5, -3.0, 0.25]))
    p.grad = torch.tensor([0.5, 2.0, -1.0])
    before = p.detach().clone()
    opt = optim.SGD([p], lr=0.1)
    with gradscope.check_step(
        opt, params={"w": p}, reference=lambda q, g, s, h: q - h["lr"] * g
    ) as report:
        opt.step()
    assert report.ok, str(report)
    extra = report["w"].tolerance - _documented_tolerance(before, p.detach() - before)
    ulp = 2 * torch.finfo(torch.float32).eps
    assert 8 * ulp <= extra <= 8 * 2 * ulp * (1 + 1e-6)


class _ForgetsOneBuffer(optim.SGD):
    """torch's SGD with momentum, then the second parameter's buffer dropped: a bug."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        del self.state[self.param_groups[0]["params"][1]]["momentum_buffer"]


def test_a_state_entry_missing_for_one_parameter_of_a_batch() -> None:
    net = _net()
    _grads(net)
    opt = _ForgetsOneBuffer(net.parameters(), lr=0.1, momentum=0.9)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    assert [p.name for p in report.failures] == ["bias"]
    [weight_buffer] = report["weight"].state
    assert (weight_buffer.entry, weight_buffer.verdict, weight_buffer.max_abs_diff) == (
        "momentum_buffer",
        "ok",
        0.0,
    )
    [bias_buffer] = report["bias"].state
    assert (bias_buffer.entry, bias_buffer.verdict) == ("momentum_buffer", "FAIL")
    assert report["bias"].reasons == (
        "momentum_buffer of bias is missing after the step (the rule keeps it): was it computed "
        "but never stored in optimizer.state[p]?",
    )


# ---- step-wide findings and the order of the report ------------------------------------------


def test_a_step_before_any_gradient_is_one_problem_in_words() -> None:
    net = _net()
    opt = optim.SGD(net.parameters(), lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    assert report.problems == [
        "every parameter in the optimizer had .grad None, so the step did nothing: was "
        "optimizer.step() called before loss.backward(), or right after zero_grad()?"
    ]
    assert report.notes == []  # no "skipped" note on top of it
    assert [p.verdict for p in report.params] == ["skipped", "skipped"]


@pytest.mark.parametrize(
    ("values", "what"),
    [
        (True, "the reference expects its parameters not to move"),
        (False, "its parameters must not move"),
    ],
)
def test_a_group_at_lr_0_is_a_note(values: bool, what: str) -> None:
    first, second = _net(), _net()
    _grads(first)
    _grads(second)
    params = {f"first.{n}": p for n, p in first.named_parameters()}
    params |= {f"second.{n}": p for n, p in second.named_parameters()}
    opt = optim.SGD([{"params": first.parameters()}, {"params": second.parameters(), "lr": 0.0}])
    opt.param_groups[0]["lr"] = 0.0
    with gradscope.check_step(opt, params=params, values=values) as report:
        opt.step()
    assert report.ok, str(report)
    assert report.notes == [
        f"lr is 0 in param group {g} (step 0 of a warmup, or a schedule that reached 0): {what}"
        for g in (0, 1)
    ]


def test_the_report_lists_parameters_in_the_optimizers_order() -> None:
    # a float64 parameter between two float32 ones lands in a batch of its own, a parameter
    # without a gradient in none: the report still follows the param groups, in order
    a, b, c, d = (nn.Parameter(torch.ones(2)) for _ in range(4))
    b.data = b.data.double()
    e, f = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3, dtype=torch.float64))
    for p in (a, b, c, e, f):
        p.grad = torch.ones_like(p)
    opt = optim.SGD([{"params": [e, f]}, {"params": [a, b, d, c]}], lr=0.1)
    names = {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}
    with gradscope.check_step(opt, params=names) as report:
        opt.step()
    assert report.ok, str(report)
    assert [(p.name, p.group) for p in report.params] == [
        ("e", 0),
        ("f", 0),
        ("a", 1),
        ("b", 1),
        ("d", 1),
        ("c", 1),
    ]
    with gradscope.check_step(opt, params=names, values=False) as report:
        opt.step()
    assert [p.name for p in report.params] == ["e", "f", "a", "b", "d", "c"]


def test_a_nan_the_rule_does_not_predict_is_a_failure() -> None:
    net = _net()
    _grads(net)
    opt = optim.SGD(net.parameters(), lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
        with torch.no_grad():
            net.weight[1, 2] = float("nan")  # every gradient is finite: the rule says finite
    assert [p.name for p in report.failures] == ["weight"]
    assert math.isnan(report["weight"].max_abs_diff)  # type: ignore[arg-type]
    assert report["bias"].max_abs_diff == 0.0


def test_a_moved_parameter_without_a_gradient_names_its_optimizer() -> None:
    nets = nn.ModuleList([nn.Linear(2, 1), nn.Linear(2, 1)])
    nets[0](torch.ones(1, 2)).sum().backward()
    first, second = optim.SGD(nets[0].parameters(), lr=0.1), optim.SGD(nets[1].parameters())
    with gradscope.check_step([first, second], params=nets) as report:
        first.step()
        second.step()
        with torch.no_grad():
            nets[1].bias.add_(1.0)
    assert [(p.name, p.optimizer, p.changed) for p in report.failures] == [("1.bias", 1, True)]


class _SetsOneElement(optim.SGD):
    """torch's SGD, then one element of the first parameter set to ``value``."""

    value = 0.0

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        self.param_groups[0]["params"][0].view(-1)[0] = self.value


def test_a_difference_equal_to_the_tolerance_is_a_match() -> None:
    # at zero (max|p| + max|update| = 0) the documented bound is c * tiny, exactly representable
    tiny = torch.finfo(torch.float32).tiny
    for value, ok in ((8 * tiny, True), (16 * tiny, False)):
        p = nn.Parameter(torch.zeros(3))
        p.grad = torch.zeros(3)
        opt = _SetsOneElement([p], lr=0.1)
        opt.value = value
        with gradscope.check_step(opt, params={"w": p}) as report:
            opt.step()
        assert report["w"].tolerance == 8 * tiny
        assert report["w"].max_abs_diff == value
        assert report.ok is ok, str(report)


class _WritesWithoutMoving(optim.SGD):
    """A step that writes every parameter but adds nothing: lr read as 0."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        for p in self.param_groups[0]["params"]:
            p.add_(p.grad, alpha=0.0)


def test_a_failing_parameter_that_was_written_but_not_moved_is_unchanged() -> None:
    net = _net()
    _grads(net)
    opt = _WritesWithoutMoving(net.parameters(), lr=0.1)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    assert [(p.name, p.changed) for p in report.failures] == [("weight", False), ("bias", False)]


class _HandAdamW(optim.AdamW):
    """torch's AdamW until ``bug`` is set; then its steps make that classic port mistake."""

    bug = ""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        if not self.bug:
            super().step()
            return
        group = self.param_groups[0]
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            state = self.state[p]
            if not state:
                state.update(step=torch.tensor(0.0), exp_avg=p * 0, exp_avg_sq=p * 0)
            state["step"] += 1
            t = float(state["step"])
            state["exp_avg"].lerp_(p.grad, 1 - b1)
            state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if self.bug == "no bias corrections":
                step = m / (v.sqrt() + eps)
            else:  # "eps inside the square root"
                step = (m / (1 - b1**t)) / (v / (1 - b2**t) + eps).sqrt()
            p.mul_(1 - lr * wd).add_(-lr * step)


@pytest.mark.parametrize("correct_steps", [0, 2])
@pytest.mark.parametrize(
    ("bug", "named"),
    [
        ("no bias corrections", "the rule without its bias corrections"),
        ("eps inside the square root", "the rule with eps inside the square root"),
    ],
)
def test_a_decoupled_decay_step_is_diagnosed_from_the_value_before_it(
    correct_steps: int, bug: str, named: str
) -> None:
    # naming the mistake needs the parameter before the step (the decay shrinks it) and, after
    # the first step, the step count the bias corrections use
    net = _net()
    opt = _HandAdamW(net.parameters(), lr=0.1, weight_decay=0.5, eps=1e-2)
    for _ in range(correct_steps):
        _grads(net)
        opt.step()
    _grads(net)
    opt.bug = bug
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    assert [p.name for p in report.failures] == ["weight", "bias"]
    for check in report.failures:
        assert named in check.reasons[0], check.reasons


class _SignSGD(optim.Optimizer):
    """A user's optimizer whose groups have no ``maximize``; ``flipped`` climbs by mistake."""

    flipped = False

    def __init__(self, params: object, lr: float) -> None:
        super().__init__(params, {"lr": lr})  # type: ignore[arg-type]

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        for p in self.param_groups[0]["params"]:
            p.add_(p.grad.sign(), alpha=self.param_groups[0]["lr"] * (1 if self.flipped else -1))


def test_a_sign_flip_in_a_users_optimizer_without_maximize() -> None:
    net = _net()
    _grads(net)
    opt = _SignSGD(net.parameters(), lr=0.1)
    opt.flipped = True
    with gradscope.check_step(
        opt, params=net, reference=lambda p, g, s, h: p - h["lr"] * g.sign()
    ) as report:
        opt.step()
    assert [p.name for p in report.failures] == ["weight", "bias"]
    reason = report["weight"].reasons[0]
    assert "maximize=True by mistake?" in reason and "which maximizes" not in reason


class _CountsMatrices(optim.Optimizer):
    """Plain SGD that counts its steps in the state of its matrices only."""

    def __init__(self, params: object, lr: float) -> None:
        super().__init__(params, {"lr": lr})  # type: ignore[arg-type]

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        for p in self.param_groups[0]["params"]:
            if p.dim() > 1:
                self.state[p]["count"] = self.state[p].get("count", 0) + 1
            p.add_(p.grad, alpha=-self.param_groups[0]["lr"])


def _counts_matrices(p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], group: Any) -> Any:
    new = p - group["lr"] * g
    return (new, {"count": state.get("count", 0) + 1}) if p.dim() > 1 else new


def test_state_is_checked_when_the_rule_keeps_state_for_any_parameter() -> None:
    net = _net()
    _grads(net)
    opt = _CountsMatrices(net.parameters(), lr=0.1)  # weight, then bias (no state)
    with gradscope.check_step(opt, params=net, reference=_counts_matrices) as report:
        opt.step()
    assert report.ok, str(report)
    assert report.state_checked
    assert [[s.entry for s in p.state] for p in report.params] == [["count"], []]
    assert "(parameters and optimizer state)" in report.headline()


def test_seven_skipped_parameters_name_six_and_one_more() -> None:
    params = {f"p{i}": nn.Parameter(torch.ones(1)) for i in range(8)}
    params["p0"].grad = torch.ones(1)
    opt = optim.SGD(params.values(), lr=0.1)
    with gradscope.check_step(opt, params=params) as report:
        opt.step()
    assert report.notes == [
        "7 parameter(s) in param groups had no gradient and were skipped (frozen, or unused in "
        "the forward pass?): p1, p2, p3, p4, p5, p6 and 1 more"
    ]


class _StepsBy(optim.SGD):
    """A step that moves every parameter by ``-amount``, whatever the gradient says."""

    amount = 0.0

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        for p in self.param_groups[0]["params"]:
            p.sub_(self.amount)


def test_a_move_equal_to_the_tolerance_is_no_move() -> None:
    # p = 2^-104 and lr * g = 2^-104: the bound is 8 * (eps * 2^-103 + tiny) = 2^-122 exactly;
    # a step that moves p by exactly that fails (the rule moves it to 0) but did not "move" it,
    # by the same inclusive bound as a match
    p = nn.Parameter(torch.tensor([2.0**-104]))
    p.grad = torch.tensor([2.0**-104])
    for amount, moved in ((2.0**-122, False), (2.0**-121, True)):
        with torch.no_grad():
            p.fill_(2.0**-104)
        opt = _StepsBy([p], lr=1.0)
        opt.amount = amount
        with gradscope.check_step(opt, params={"w": p}) as report:
            opt.step()
        assert report["w"].tolerance == 2.0**-122
        assert report["w"].failed and report["w"].changed is moved


def test_structural_a_parameter_that_became_nan_has_changed() -> None:
    net = _net()
    _grads(net)

    def poison() -> None:
        net.weight[0, 1] = float("nan")

    report = _structural(optim.SGD(net.parameters(), lr=0.0), net, poison)
    assert report["weight"].changed and not report["bias"].changed
    assert report["weight"].verdict == "FAIL"


# ---- scalar state entries (step, NAdam's mu_product) ----------------------------------------


def _nadam_after(steps: int, after: Callable[[optim.Optimizer], None] | None = None) -> Any:
    net = nn.Linear(2, 1)
    opt = optim.NAdam(net.parameters(), lr=0.1)
    reports = []
    for _ in range(steps):
        net.zero_grad()
        net(torch.ones(1, 2)).sum().backward()
        with gradscope.check_step(opt, params=net) as report:
            opt.step()
            if after is not None:
                after(opt)
        reports.append(report)
    return reports[-1], opt, net


def test_scalar_state_verdicts_and_tolerances_worked_out_by_hand() -> None:
    # NAdam's mu_product after steps 1 and 2 (torch's own state is the oracle): its tolerance is
    # c * (eps * (|new| + |old|) + tiny) in float32 with c = 8 (docs/optimizer.rst); step: 0.5
    _, opt, net = _nadam_after(1)
    old = float(opt.state[net.weight]["mu_product"])
    net.zero_grad()
    net(torch.ones(1, 2)).sum().backward()
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    new = float(opt.state[net.weight]["mu_product"])
    finfo = torch.finfo(torch.float32)
    checks = {s.entry: s for s in report["weight"].state}
    assert {k: s.verdict for k, s in checks.items()} == {
        "exp_avg": "ok",
        "exp_avg_sq": "ok",
        "mu_product": "ok",
        "step": "ok",
    }
    assert checks["step"].tolerance == 0.5 and checks["step"].max_abs_diff == 0.0
    want = 8 * (finfo.eps * (abs(new) + abs(old)) + finfo.tiny)
    assert checks["mu_product"].tolerance == pytest.approx(want, rel=1e-6)


def test_a_scalar_state_entry_removed_by_the_step_is_missing() -> None:
    def forget(opt: optim.Optimizer) -> None:
        for p in opt.param_groups[0]["params"]:
            del opt.state[p]["mu_product"]

    report, _, _ = _nadam_after(1, forget)
    (missing,) = [s for s in report["bias"].state if s.entry == "mu_product"]
    assert (missing.verdict, missing.max_abs_diff, missing.tolerance) == ("FAIL", None, None)
    assert missing.reason == (
        "is missing after the step (the rule keeps it): was it computed but never stored in "
        "optimizer.state[p]?"
    )


def test_a_step_count_off_by_half_is_within_its_tolerance_and_a_whole_one_is_not() -> None:
    def shift(by: float) -> Callable[[optim.Optimizer], None]:
        def move(opt: optim.Optimizer) -> None:
            for p in opt.param_groups[0]["params"]:
                opt.state[p]["step"] += by

        return move

    report, _, _ = _nadam_after(1, shift(0.5))
    (step,) = [s for s in report["weight"].state if s.entry == "step"]
    assert (step.verdict, step.max_abs_diff, step.tolerance) == ("ok", 0.5, 0.5)
    report, _, _ = _nadam_after(1, shift(1.0))
    (step,) = [s for s in report["weight"].state if s.entry == "step"]
    assert (step.verdict, step.reason) == ("FAIL", "is 2, the rule expects 1")
