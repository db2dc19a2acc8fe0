"""Each assertion's whole failure message, word for word, on one small model set up by hand.

The message is what a user reads when a test fails: every count, name, shape, index and number
in it is checked here against values worked out by hand from the gradients set below (the
norm of [1, 2, 3] is sqrt(14) = 3.742), along with the hint and the singular/plural wording.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from torch import nn

import gradscope.testing as gt
from gradscope import GradientAssertionError, GradscopeError, UnknownParameterError

NAN, INF = math.nan, math.inf


def _model() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    net[0].weight.grad = torch.tensor([[1.0, NAN], [INF, 1.0], [1.0, -INF]])
    net[0].bias.grad = torch.tensor([1.0, 2.0, 3.0])
    net[1].weight.grad = torch.ones(1, 3)
    net[1].bias.grad = torch.ones(1)
    return net


def _message(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(GradientAssertionError) as excinfo:
        call(*args, **kwargs)  # type: ignore[operator]
    assert isinstance(excinfo.value, AssertionError) and isinstance(excinfo.value, GradscopeError)
    return str(excinfo.value)


FINITE_HINT = (
    "Hint: NaN/Inf gradients usually start in the forward pass (log or sqrt of 0, division by "
    "0, exp overflow) or after a too-large step; gradscope.graph(loss, params=net, "
    "grads=True).first_nonfinite names the op that produced the first one"
)


def test_assert_grads_finite_message() -> None:
    net = _model()
    assert _message(gt.assert_grads_finite, net) == "\n".join(
        [
            "assert_grads_finite: 1 of 4 gradients is not finite",
            "  0.weight (3, 2): 1 NaN, 1 +Inf, 1 -Inf of 6 elements; first at index (0, 1) = nan",
            FINITE_HINT,
        ]
    )
    net[1].bias.grad = torch.tensor([-INF])
    assert _message(gt.assert_grads_finite, net, msg="after warm-up") == "\n".join(
        [
            "after warm-up",
            "assert_grads_finite: 2 of 4 gradients are not finite",
            "  0.weight (3, 2): 1 NaN, 1 +Inf, 1 -Inf of 6 elements; first at index (0, 1) = nan",
            "  1.bias (1,): 0 NaN, 0 +Inf, 1 -Inf of 1 element; first at index (0,) = -inf",
            FINITE_HINT,
        ]
    )


NO_GRAD_HINT = (
    "Hint: a parameter without a gradient is not connected to the loss: forward() does not "
    "use it, its output is .detach()ed or computed under torch.no_grad(), or it only feeds an "
    "output the loss ignores; pass ignore=[...] for ones unused on purpose"
)
ZERO_HINT = (
    "an all-zero gradient usually means dead ReLUs, a multiplication by zero, or a parameter "
    "reset by zero_grad(set_to_none=False) and never reached; pass allow_zero=True if that is "
    "expected"
)


def test_assert_all_params_have_grad_message() -> None:
    net = _model()
    net[0].weight.grad = torch.zeros(3, 2)
    net[1].weight.grad = None
    assert _message(gt.assert_all_params_have_grad, net) == "\n".join(
        [
            "assert_all_params_have_grad: 2 of 4 trainable parameters have no usable gradient "
            "(1 without .grad, 1 all zeros)",
            "  0.weight (3, 2): gradient is all zeros (6 elements)",
            "  1.weight (1, 3): no gradient (.grad is None)",
            f"{NO_GRAD_HINT}; {ZERO_HINT}",
        ]
    )
    net[1].weight.grad = torch.ones(1, 3)
    assert _message(gt.assert_all_params_have_grad, net) == "\n".join(
        [
            "assert_all_params_have_grad: 1 of 4 trainable parameters has no usable gradient "
            "(0 without .grad, 1 all zeros)",
            "  0.weight (3, 2): gradient is all zeros (6 elements)",
            f"Hint: {ZERO_HINT}",
        ]
    )
    net[0].weight.grad = torch.ones(3, 2)
    net[1].bias.grad = None
    assert _message(gt.assert_all_params_have_grad, net, ignore="0.*") == "\n".join(
        [
            "assert_all_params_have_grad: 1 of 2 trainable parameters has no usable gradient "
            "(1 without .grad, 0 all zeros)",
            "  1.bias (1,): no gradient (.grad is None)",
            NO_GRAD_HINT,
        ]
    )


def test_assert_no_grad_message() -> None:
    net = _model()
    net[0].weight.grad = torch.tensor([[0.0, 0.0], [0.0, -4.0], [0.0, 0.0]])
    assert _message(gt.assert_no_grad, net, ["0.*"]) == "\n".join(
        [
            "assert_no_grad: 2 of 2 parameters that must stay out of the graph have a gradient",
            "  0.weight (3, 2): has a gradient: norm 4, largest |element| 4 at index (1, 1), "
            "1 of 6 elements non-zero",
            "  0.bias (3,): has a gradient: norm 3.742, largest |element| 3 at index (2,), "
            "3 of 3 elements non-zero",
            "Hint: keep a parameter out of the graph with param.requires_grad_(False), by using "
            "it under torch.no_grad() or by .detach()ing its output; a zero tensor left by "
            "zero_grad(set_to_none=False) passes with allow_zero=True",
        ]
    )
    net[0].weight.grad = None
    assert _message(gt.assert_no_grad, net, "0.*").startswith(
        "assert_no_grad: 1 of 2 parameters that must stay out of the graph has a gradient\n"
    )
    with pytest.raises(GradscopeError, match=r"^assert_no_grad: names= .*'2\.\*'"):
        gt.assert_no_grad(net, ["2.*"])


def test_assert_grad_norms_message() -> None:
    net = _model()
    assert _message(gt.assert_grad_norms, net, min=1.5, max=2.0) == "\n".join(
        [
            "assert_grad_norms: 3 of 4 gradient norms outside the bounds",
            "  0.weight (3, 2): gradient norm is nan (allowed: [1.5, 2]); largest |element| nan "
            "at index (0, 1) of 6 elements",
            "  0.bias (3,): gradient norm 3.742 > max=2.0; largest |element| 3 at index (2,) "
            "of 3 elements",
            "  1.bias (1,): gradient norm 1 < min=1.5; largest |element| 1 at index (0,) "
            "of 1 element",
            "Hint: vanishing gradients: check the initialisation, saturating activations "
            "(sigmoid/tanh), deep stacks without residuals or normalisation, or a loss already "
            "near 0; lower min= if this size is expected; exploding gradients: lower the "
            "learning rate, clip with torch.nn.utils.clip_grad_norm_(net.parameters(), "
            "max_norm), or check the loss scale (sum instead of mean?); raise max= if this "
            "size is expected",
        ]
    )


UPDATED_HINT = (
    "Hint: a parameter that does not move has no gradient, is missing from the optimizer's "
    "param groups, or has lr=0; pass ignore=[...] for ones that are unused on purpose"
)
FROZEN_HINT = (
    "a frozen parameter that moves is in the optimizer with weight decay or momentum from "
    "earlier steps, or is updated by hand; leave it out of the optimizer"
)


def test_assert_params_updated_message() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    net[1].bias.requires_grad_(False)

    def step() -> int:  # moves one weight element by hand, and the frozen bias
        with torch.no_grad():
            net[0].weight[1, 0] -= 0.5
            net[1].bias += 0.25
        net[0].bias.grad = torch.ones(3)
        net[1].weight.grad = None
        return 7

    skipped = (
        "  0.bias (3,): did not change (all 3 elements equal); its .grad is non-zero, so the "
        "optimizer skipped it (is it in the optimizer?) or lr=0"
    )
    unused = (
        "  1.weight (1, 3): did not change (all 3 elements equal); its .grad is None (not "
        "connected to the loss, or zero_grad after backward?)"
    )
    frozen_bias = (
        "  1.bias (1,): changed though it is frozen (requires_grad=False): 1 of 1 element, "
        "largest change 0.25 at index (0,)"
    )
    assert _message(gt.assert_params_updated, net, step) == "\n".join(
        [
            "assert_params_updated: 3 of 4 parameters not updated as expected (2 unchanged, "
            "1 frozen but changed)",
            skipped,
            unused,
            frozen_bias,
            f"{UPDATED_HINT}; {FROZEN_HINT}",
        ]
    )
    assert _message(gt.assert_params_updated, net, step, frozen="0.weight", msg="ctx") == (
        "\n".join(
            [
                "ctx",
                "assert_params_updated: 4 of 4 parameters not updated as expected (2 unchanged, "
                "2 frozen but changed)",
                "  0.weight (3, 2): changed though it is frozen (frozen= lists it): 1 of 6 "
                "elements, largest change 0.5 at index (1, 0)",
                skipped,
                unused,
                frozen_bias,
                f"{UPDATED_HINT}; {FROZEN_HINT}",
            ]
        )
    )

    def zero_step() -> None:  # nothing moves; .grad is all zeros
        net[0].weight.grad = torch.zeros(3, 2)

    assert _message(gt.assert_params_updated, net, zero_step, ignore="[01].bias") == "\n".join(
        [
            "assert_params_updated: 2 of 2 parameters not updated as expected (2 unchanged, "
            "0 frozen but changed)",
            "  0.weight (3, 2): did not change (all 6 elements equal); its .grad is all zeros",
            unused,
            UPDATED_HINT,
        ]
    )
    assert gt.assert_params_updated(net[0], lambda: step() and 5, ignore="bias") == 5


CLOSE_HINT = (
    "Hint: a few mismatched elements against a float64 copy usually need a looser rtol=/atol= "
    "(float32 rounding grows with layer size); every element off by one factor suggests a "
    "mean vs sum or a missing scale; scattered large errors, a wrong backward"
)


def test_assert_grads_close_message() -> None:
    net = nn.Linear(2, 2)
    net.weight.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    net.bias.grad = torch.tensor([0.5, -0.5])
    expected = {"weight": torch.tensor([[1.0, 2.5], [3.0, 2.0]]), "bias": net.bias.grad.clone()}
    # differences [0, 0.5, 0, 2]; relative to expected [0, 0.2, 0, 1]
    assert _message(gt.assert_grads_close, net, expected) == "\n".join(
        [
            "assert_grads_close: 1 of 2 gradients differs from expected (rtol=1.3e-06, atol=1e-05)",
            "  weight (2, 2): mismatched elements: 2 / 4 (50.0%); greatest absolute difference "
            "2 at index (1, 1) (up to 1e-05 allowed); greatest relative difference 1 at index "
            "(1, 1) (up to 1.3e-06 allowed); first at index (0, 1): got 2, expected 2.5",
            CLOSE_HINT,
        ]
    )
    # rtol=0.3 lets 0.5 <= 0.3 * 2.5 pass; 2 > 0.3 * 2 does not
    assert _message(gt.assert_grads_close, net, expected, rtol=0.3, atol=0) == "\n".join(
        [
            "assert_grads_close: 1 of 2 gradients differs from expected (rtol=0.3, atol=0)",
            "  weight (2, 2): mismatched elements: 1 / 4 (25.0%); greatest absolute difference "
            "2 at index (1, 1) (up to 0 allowed); greatest relative difference 1 at index (1, 1) "
            "(up to 0.3 allowed); first at index (1, 1): got 4, expected 2",
            CLOSE_HINT,
        ]
    )
    gt.assert_grads_close(net, expected, rtol=0.0, atol=2.0)  # every difference <= 2
    both = {"weight": torch.zeros(2, 2, dtype=torch.float64), "bias": None}
    net.weight.grad = None
    assert _message(gt.assert_grads_close, net, both) == "\n".join(
        [
            "assert_grads_close: 2 of 2 gradients differ from expected (no tolerance)",
            "  weight (2, 2): no gradient, but expected has one",
            "  bias (2,): has a gradient, but expected has none (None)",
            CLOSE_HINT,
        ]
    )


def test_assert_grads_close_bad_input_messages() -> None:
    net = nn.Linear(2, 2)
    net(torch.randn(3, 2)).sum().backward()
    grads = {"weight": net.weight.grad, "bias": net.bias.grad}
    takes = (
        "assert_grads_close: expected= takes a module (e.g. a float64 copy after its own "
        "backward), its parameters in the form the module under test was given, or a mapping of "
        "parameter name -> expected gradient, not "
    )
    cases: list[tuple[object, dict[str, object], str]] = [
        (5, {}, takes + "int 5"),
        ("weight", {}, takes + "str 'weight'"),
        ({1: net.weight.grad}, {}, "assert_grads_close: expected has a key 1 that is not a name"),
        (
            {"weight": [1.0], "bias": None},
            {},
            "assert_grads_close: expected['weight'] is list [1.0]; give a tensor (or None)",
        ),
        (
            {**grads, "b": None, "a": None},
            {},
            "assert_grads_close: these names in expected are not the module's: ['a', 'b']; the "
            "module's are ['bias', 'weight']",
        ),
        (
            nn.Sequential(nn.Linear(2, 2)),
            {},
            "assert_grads_close: these names in the expected module are not the module's: "
            "['0.bias', '0.weight']; the module's are ['bias', 'weight']",
        ),
        (
            {"weight": net.weight.grad},
            {},
            "assert_grads_close: expected has no entry for ['bias']; give one per parameter, or "
            "pass ignore=['bias']",
        ),
        (
            grads,
            {"rtol": 1e-3},
            "assert_grads_close: give both rtol= and atol= or neither (as "
            "torch.testing.assert_close does); got rtol=0.001, atol=None",
        ),
        (grads, {"rtol": -1, "atol": 0}, "assert_grads_close: rtol=-1 must be >= 0"),
        (grads, {"rtol": 0, "atol": math.nan}, "assert_grads_close: atol=nan must be >= 0"),
        (
            grads,
            {"rtol": True, "atol": 0},
            "assert_grads_close: rtol= takes a number, not bool True",
        ),
        (grads, {"rtol": 0, "atol": "x"}, "assert_grads_close: atol= takes a number, not str 'x'"),
    ]
    listed = [*net.parameters(), torch.zeros(1)]
    cases += [
        (
            listed,
            {},
            "assert_grads_close: these names in the expected parameters are not the module's: "
            "['[2]']; the module's are ['[0]', '[1]']",
        ),
        (
            [1, 2],
            {},
            "expected= entry 0 is int 1: an iterable passed as expected= must hold tensors or "
            "(name, tensor) pairs",
        ),
    ]
    for expected, tolerances, text in cases:
        if isinstance(expected, list):  # the module under test given as a list too
            with pytest.raises(GradscopeError) as excinfo:
                gt.assert_grads_close(list(net.parameters()), expected)
            assert str(excinfo.value) == text
            continue
        with pytest.raises(GradscopeError) as excinfo:
            gt.assert_grads_close(net, expected, **tolerances)  # type: ignore[arg-type]
        assert not isinstance(excinfo.value, AssertionError), text  # bad input, not a failure
        assert str(excinfo.value) == text
    # the reference's parameters, in the form the module under test was given
    ref = nn.Linear(2, 2)
    ref.load_state_dict(net.state_dict())
    ref(torch.ones(3, 2)).sum().backward()
    gt.assert_grads_close(net, {"weight": ref.weight.grad, "bias": ref.bias.grad}, ignore="weight")
    gt.assert_grads_close(list(net.parameters()), list(ref.parameters()), ignore="[0]")
    gt.assert_grads_close(net.named_parameters(), ref.named_parameters(), ignore="weight")
    gt.assert_grads_close(net, ref, ignore="weight")  # the bias gradient is 3 either way
    text = _message(gt.assert_grads_close, list(net.parameters()), list(ref.parameters()))
    assert text.startswith("assert_grads_close: 1 of 2 gradients differs from expected")
    assert "\n  [0] (2, 2): mismatched elements: " in text


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
    ],
)
def test_assert_grads_close_default_tolerances_agree_with_torch_testing(dtype: torch.dtype) -> None:
    # oracle: torch.testing.assert_close with its own defaults, on both sides of each threshold
    base = torch.tensor([1.0, 100.0, 1e-6], dtype=torch.float64)
    if dtype.is_complex:
        base = torch.complex(base, -base)
    for delta in (0.0, 1e-8, 5e-7, 2e-6, 5e-5, 5e-4, 2e-3, 1e-2, 3e-2, 0.1):
        got = base.to(dtype)
        want = (base * (1 + delta)).to(dtype)
        p = nn.Parameter(torch.zeros(3, dtype=dtype))
        p.grad = got
        try:
            torch.testing.assert_close(got, want)
        except AssertionError:
            with pytest.raises(GradientAssertionError):
                gt.assert_grads_close({"w": p}, {"w": want})
        else:
            gt.assert_grads_close({"w": p}, {"w": want})


TAKES_MODULE = (
    "module= takes an nn.Module, a mapping of name -> tensor, or an iterable of tensors or "
    "(name, tensor) pairs, not int 5; pass the model itself (e.g. module=net), net.parameters() "
    "or dict(net.named_parameters())"
)


def test_every_assertion_names_itself_and_the_argument_in_bad_input_errors() -> None:
    net = nn.Linear(2, 2)
    net(torch.randn(3, 2)).sum().backward()

    def step() -> None:
        return None

    calls: dict[str, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {
        "assert_grads_finite": (gt.assert_grads_finite, (), {}),
        "assert_all_params_have_grad": (gt.assert_all_params_have_grad, (), {}),
        "assert_grad_norms": (gt.assert_grad_norms, (), {"max": 1.0}),
        "assert_params_updated": (gt.assert_params_updated, (step,), {}),
        "assert_grads_close": (gt.assert_grads_close, ({},), {}),
    }
    known = "which matches no parameter; known names: 'weight', 'bias'"
    for function, (call, args, kwargs) in calls.items():
        with pytest.raises(UnknownParameterError) as excinfo:
            call(net, *args, ignore="nope", **kwargs)
        assert str(excinfo.value) == f"{function}: ignore= names 'nope', {known}"
        with pytest.raises(GradscopeError) as error:
            call(5, *args, **kwargs)
        assert str(error.value) == f"{function}: {TAKES_MODULE}"
    with pytest.raises(UnknownParameterError) as excinfo:
        gt.assert_params_updated(net, step, frozen="nope")
    assert str(excinfo.value) == f"assert_params_updated: frozen= names 'nope', {known}"
    with pytest.raises(UnknownParameterError) as excinfo:
        gt.assert_no_grad(net, "nope")
    assert str(excinfo.value) == f"assert_no_grad: names= names 'nope', {known}"
    with pytest.raises(GradscopeError) as error:
        gt.assert_no_grad(5, "w")  # type: ignore[arg-type]
    assert str(error.value) == f"assert_no_grad: {TAKES_MODULE}"


STEP_HINT = (
    "Hint: the reasons above guess the mistake; common ones: a parameter in no param group, "
    "grads changed between backward and step (clipping, scaling), a second step() call, or an "
    "optimizer subclass with its own update (pass reference=); print(report) from "
    "gradscope.check_step shows the full table"
)


def test_assert_step_matches_reference_message() -> None:
    net = nn.Linear(2, 2)
    extra = nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step() -> int:  # SGD's step, then 0.25 more on one bias element by hand
        opt.zero_grad()
        net.weight.grad = torch.ones(2, 2)
        net.bias.grad = torch.tensor([1.0, 2.0])
        extra.weight.grad = torch.ones(1, 1)
        opt.step()
        with torch.no_grad():
            net.bias[0] += 0.25
        return 3

    # the bias moved by -0.1 + 0.25 where the rule says -0.1: 0.25 off, 1.25 of its largest
    # step (0.2); the tolerance comes from the rule's rounding and is checked elsewhere
    bias = (
        "its update is not a multiple of the reference update: check the update rule "
        "(momentum, weight decay, the state it starts from) (param group 0): max abs diff 0.25 "
        "(tolerance TOL), 1.25 of the step"
    )
    head = (
        "assert_step_matches_reference: SGD.step() does not match the documented "
        "torch.optim.SGD update rule: "
    )
    for params, name in ((net, "bias"), (None, "group0.param1")):
        text = _message(gt.assert_step_matches_reference, opt, step, params=params)
        expected = "\n".join(
            [f"{head}1 of 2 parameters failed", f"  {name} (2,): {bias}", STEP_HINT]
        )
        pattern = re.escape(expected).replace("TOL", r"[0-9.e-]+")
        assert re.fullmatch(pattern, text), text
    both = nn.ModuleDict({"a": net, "b": extra})
    text = _message(gt.assert_step_matches_reference, opt, step, params=both)
    # b.bias has no gradient and is in no group: not checked; b.weight has one: a failure
    assert text.startswith(f"{head}2 of 3 parameters failed\n"), text
    assert "\n  b.weight (1, 1): " in text and "(in no param group)" in text
    assert re.search(r"\n  a\.bias \(2,\): its update is not a multiple", text)
    with pytest.raises(GradscopeError) as error:
        gt.assert_step_matches_reference(opt, 5)  # type: ignore[arg-type]
    assert str(error.value) == (
        "assert_step_matches_reference: step= must be a callable that runs one training step "
        "ending in optimizer.step(), not int 5; pass the function itself (step, not step())"
    )


def test_an_integer_expected_gradient_is_compared_exactly_on_its_side() -> None:
    # torch.testing gives integer dtypes rtol = atol = 0; against float32 the float32 pair wins
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 2.0])
    want = torch.tensor([1, 3])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(p.grad, want, check_dtype=False)
    text = _message(gt.assert_grads_close, {"w": p}, {"w": want})
    assert text.startswith(
        "assert_grads_close: 1 of 1 gradient differs from expected (rtol=1.3e-06, atol=1e-05)\n"
        "  w (2,): mismatched elements: 1 / 2 (50.0%); greatest absolute difference 1 at index "
        "(1,) (up to 1e-05 allowed); greatest relative difference 0.3333 at index (1,) (up to "
        "1.3e-06 allowed); first at index (1,): got 2, expected 3\n"
    ), text
    gt.assert_grads_close({"w": p}, {"w": torch.tensor([1, 2])})


def test_differences_are_taken_wide_enough() -> None:
    # float16: 60000 - (-60000) overflows float16 (max 65504); the report works in float64
    p = nn.Parameter(torch.zeros(2, dtype=torch.float16))
    p.grad = torch.tensor([60000.0, 1.0], dtype=torch.float16)
    want = torch.tensor([-60000.0, 1.0], dtype=torch.float16)
    text = _message(gt.assert_grads_close, {"w": p}, {"w": want})
    assert (
        "greatest absolute difference 1.2e+05 at index (0,) (up to 1e-05 allowed); greatest "
        "relative difference 2 at index (0,) (up to 0.001 allowed); first at index (0,): got "
        "6e+04, expected -6e+04" in text
    ), text
    # complex: |(1+1j) - (1+2j)| = 1, relative 1 / |1+2j| = 1 / sqrt(5); the real parts agree
    q = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    q.grad = torch.tensor([1 + 1j, 2 + 0j], dtype=torch.complex64)
    want = torch.tensor([1 + 2j, 2 + 0j], dtype=torch.complex64)
    text = _message(gt.assert_grads_close, {"w": q}, {"w": want})
    assert (
        "greatest absolute difference 1 at index (0,) (up to 1e-05 allowed); greatest "
        "relative difference 0.4472 at index (0,) (up to 1.3e-06 allowed); first at index "
        "(0,): got 1+1j, expected 1+2j" in text
    ), text


def test_assert_grads_close_shapes_and_missing_gradients() -> None:
    net = nn.Linear(3, 2)
    net.weight.grad = torch.ones(2, 3)
    assert _message(gt.assert_grads_close, net, {"weight": torch.ones(3, 2), "bias": None}) == (
        "\n".join(
            [
                "assert_grads_close: 1 of 2 gradients differs from expected (no tolerance)",
                "  weight (2, 3): shape differs from expected (3, 2)",
                CLOSE_HINT,
            ]
        )
    )
    # no gradient where none is expected is a match
    gt.assert_grads_close(net, {"weight": torch.ones(2, 3), "bias": None})


def test_assert_grads_close_lists_each_tolerance_pair_it_used() -> None:
    # float32 against float32, and float32 against float16 (float16's looser pair wins)
    w, v = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    w.grad, v.grad = torch.tensor([1.0]), torch.tensor([1.0])
    expected = {"w": torch.tensor([2.0]), "v": torch.tensor([3.0], dtype=torch.float16)}
    assert _message(gt.assert_grads_close, {"w": w, "v": v}, expected, msg="ctx") == "\n".join(
        [
            "ctx",
            "assert_grads_close: 2 of 2 gradients differ from expected (rtol=1.3e-06, "
            "atol=1e-05; rtol=0.001, atol=1e-05)",
            "  w (1,): mismatched elements: 1 / 1 (100.0%); greatest absolute difference 1 at "
            "index (0,) (up to 1e-05 allowed); greatest relative difference 0.5 at index (0,) "
            "(up to 1.3e-06 allowed); first at index (0,): got 1, expected 2",
            "  v (1,): mismatched elements: 1 / 1 (100.0%); greatest absolute difference 2 at "
            "index (0,) (up to 1e-05 allowed); greatest relative difference 0.6667 at index (0,) "
            "(up to 0.001 allowed); first at index (0,): got 1, expected 3",
            CLOSE_HINT,
        ]
    )


def test_assert_params_updated_replaced_nan_and_bad_step() -> None:
    net = nn.Linear(2, 1)

    def replace() -> None:
        net.weight.data = torch.zeros(3, 2)

    assert _message(gt.assert_params_updated, net, replace, ignore="bias") == "\n".join(
        [
            "assert_params_updated: 1 of 1 parameter not updated as expected (0 unchanged, "
            "0 frozen but changed)",
            "  weight (3, 2): changed shape from (1, 2); was the parameter replaced?",
            "Hint: a parameter was replaced during the step",
        ]
    )
    # the parameters after a replaced one are still checked
    net.weight.data = torch.zeros(1, 2)
    assert _message(gt.assert_params_updated, net, replace) == "\n".join(
        [
            "assert_params_updated: 2 of 2 parameters not updated as expected (1 unchanged, "
            "0 frozen but changed)",
            "  weight (3, 2): changed shape from (1, 2); was the parameter replaced?",
            "  bias (1,): did not change (its one element is the same); its .grad is None (not "
            "connected to the loss, or zero_grad after backward?)",
            UPDATED_HINT,
        ]
    )
    # a frozen parameter that turned NaN: the NaN is the largest change
    frozen = nn.Parameter(torch.tensor([1.0, 2.0]), requires_grad=False)
    text = _message(
        gt.assert_params_updated, {"f": frozen}, lambda: frozen.data.copy_(torch.tensor([NAN, 2.5]))
    )
    assert (
        "  f (2,): changed though it is frozen (requires_grad=False): 2 of 2 elements, largest "
        "change nan at index (0,)\n" in text
    ), text
    # a NaN that becomes a number, or a number that becomes NaN, is a change; NaN to NaN is not
    p = nn.Parameter(torch.tensor([NAN, 1.0, NAN]))
    gt.assert_params_updated({"p": p}, lambda: p.data.copy_(torch.tensor([0.0, 1.0, NAN])))
    gt.assert_params_updated({"p": p}, lambda: p.data.copy_(torch.tensor([0.0, NAN, NAN])))
    text = _message(gt.assert_params_updated, {"p": p}, lambda: None)
    assert "  p (3,): did not change (all 3 elements equal); its .grad is None" in text
    with pytest.raises(GradscopeError) as error:
        gt.assert_params_updated(net, 5)  # type: ignore[arg-type]
    assert str(error.value) == (
        "assert_params_updated: step= must be a callable that runs one training step (zero_grad, "
        "forward, backward, optimizer.step()), not int 5; pass the function itself, not its "
        "result (step, not step())"
    )


def test_assert_step_matches_reference_uses_the_reference_it_is_given() -> None:
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)

    def step() -> None:
        opt.zero_grad()
        w.grad = torch.ones(2)
        opt.step()

    def twice_sgd(param: torch.Tensor, grad: torch.Tensor, state: Any, group: Any) -> torch.Tensor:
        return param - 2 * group["lr"] * grad  # not what SGD does

    gt.assert_step_matches_reference(opt, step)  # the documented SGD rule: a pass
    text = _message(gt.assert_step_matches_reference, opt, step, reference=twice_sgd)
    assert text.startswith("assert_step_matches_reference: SGD.step() does not match "), text
    assert "twice_sgd" in text.splitlines()[0] and "1 of 1 parameter failed" in text, text


def test_assert_step_matches_reference_step_wide_problem_message() -> None:
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)

    def step() -> None:  # zero_grad, then step: no gradient anywhere
        opt.zero_grad()
        opt.step()

    assert _message(gt.assert_step_matches_reference, opt, step, msg="ctx") == "\n".join(
        [
            "ctx",
            "assert_step_matches_reference: SGD.step() does not match the documented "
            "torch.optim.SGD update rule: 0 of 1 parameter failed, 1 step-wide problem",
            "  (whole step): every parameter in the optimizer had .grad None, so the step did "
            "nothing: was optimizer.step() called before loss.backward(), or right after "
            "zero_grad()?",
            STEP_HINT,
        ]
    )


def test_assert_grads_close_infinite_relative_difference_and_every_parameter_checked() -> None:
    net = nn.Linear(2, 2)
    net.weight.grad = torch.ones(2, 2)
    net.bias.grad = torch.tensor([1.0, 0.0])
    expected = {"weight": torch.ones(3), "bias": torch.tensor([0.0, 0.0])}
    # a shape mismatch does not stop the check; 1 against 0 is infinitely far, relatively
    assert _message(gt.assert_grads_close, net, expected) == "\n".join(
        [
            "assert_grads_close: 2 of 2 gradients differ from expected (rtol=1.3e-06, atol=1e-05)",
            "  weight (2, 2): shape differs from expected (3,)",
            "  bias (2,): mismatched elements: 1 / 2 (50.0%); greatest absolute difference 1 at "
            "index (0,) (up to 1e-05 allowed); greatest relative difference inf at index (0,) (up "
            "to 1.3e-06 allowed); first at index (0,): got 1, expected 0",
            CLOSE_HINT,
        ]
    )


def test_assert_step_matches_reference_fails_a_step_too_small_to_check() -> None:
    # weight.grad 2 and bias.grad 1, lr 1e-9: updates 2e-9 and 1e-9, far inside float32's
    # rounding of weights near 0.5 (about 1e-6), so a skipped step would match as well
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1e-9)

    def step(lr: float) -> None:
        opt.param_groups[0]["lr"] = lr
        with torch.no_grad():
            net.weight.fill_(0.5)
            net.bias.fill_(0.25)
        net.weight.grad = torch.full((1, 2), 2.0, dtype=net.weight.dtype)
        net.bias.grad = torch.ones(1, dtype=net.bias.dtype)
        opt.step()

    text = _message(gt.assert_step_matches_reference, opt, lambda: step(1e-9), params=net)
    expected = "\n".join(
        [
            "assert_step_matches_reference: SGD.step() could not be checked against the "
            "documented torch.optim.SGD update rule: its reference moves every parameter by no "
            "more than the tolerance, so a wrong step (skipped, doubled) would match too",
            "  weight (1, 2): largest update 2e-09, tolerance TOL",
            "  bias (1,): largest update 1e-09, tolerance TOL",
            "Hint: make the step larger than rounding in the test: a larger lr or larger "
            "gradients, or float64 parameters (a tolerance about 5e8 times smaller)",
        ]
    )
    assert re.fullmatch(re.escape(expected).replace("TOL", r"[0-9.]+e-0[67]"), text), text
    text = _message(gt.assert_step_matches_reference, opt, lambda: step(1e-9), msg="warmup")
    assert text.startswith("warmup\nassert_step_matches_reference: SGD.step() could not be")
    gt.assert_step_matches_reference(opt, lambda: step(1e-3), params=net)  # 2e-3: resolved
    net.double()  # the same tiny step, resolved in float64
    gt.assert_step_matches_reference(opt, lambda: step(1e-9), params=net)


def test_assert_step_matches_reference_joins_every_reason_of_a_parameter() -> None:
    # a step twice as long that also never stores SGD's momentum buffer: two reasons for each
    # parameter, in one line; a parameter in no param group fails without numbers
    class TwiceNoMomentum(torch.optim.SGD):
        @torch.no_grad()
        def step(self, closure=None):  # type: ignore[no-untyped-def]
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(p.grad, alpha=-2 * group["lr"])

    net, extra = nn.Linear(2, 1), nn.Linear(1, 1)
    opt = TwiceNoMomentum(net.parameters(), lr=0.1, momentum=0.9)

    def step() -> None:
        net.weight.grad, net.bias.grad = torch.ones(1, 2), torch.ones(1)
        extra.weight.grad = torch.ones(1, 1)
        opt.step()

    both = nn.ModuleDict({"a": net, "b": extra})
    lines = _message(gt.assert_step_matches_reference, opt, step, params=both).splitlines()
    assert lines[0].endswith(": 3 of 3 parameters failed"), lines[0]  # b.bias: no gradient
    twice = "it moved twice as far as the reference: was the step applied twice?"
    stored = "was it computed but never stored in optimizer.state[p]?"
    for line, name, shape in ((lines[1], "a.weight", "(1, 2)"), (lines[2], "a.bias", "(1,)")):
        pattern = (
            f"  {name} {shape}: {twice}; momentum_buffer of {name} is missing after the step "
            f"(the rule keeps it): {stored} (param group 0): max abs diff 0.1 (tolerance TOL), "
            "1 of the step"
        )
        assert re.fullmatch(re.escape(pattern).replace("TOL", r"[0-9.]+e-07"), line), line
    assert lines[3] == (
        "  b.weight (1, 1): it has a gradient but is in no param group: it will never be "
        "updated; pass all the model's parameters to the optimizer (e.g. "
        "torch.optim.SGD(net.parameters(), ...)) or add it with "
        "optimizer.add_param_group({'params': [...]}); if another optimizer updates it "
        "(SparseAdam for embeddings), check both: check_step([sparse_opt, dense_opt], ...) "
        "(in no param group)"
    )
