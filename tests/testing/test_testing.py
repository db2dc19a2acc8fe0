"""gradscope.testing: each assertion passes on a sound model, fails with names and numbers."""

from __future__ import annotations

import copy
import inspect
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import gradscope
import gradscope.testing as gt
from gradscope import GradientAssertionError, GradscopeError, UnknownParameterError

SETTINGS = settings(max_examples=40, deadline=None)


def _backward(net: nn.Module, x: torch.Tensor) -> None:
    net.zero_grad()
    net(x).sum().backward()


def _message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(excinfo.value)


class TiedLM(nn.Module):
    """Embedding and output projection share one weight, as in GPT-2."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.body = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True),
            num_layers=2,
            enable_nested_tensor=False,
        )
        self.head = nn.Linear(8, 11, bias=False)
        self.head.weight = self.embed.weight
        self.unused = nn.Linear(8, 8)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(self.embed(tokens)))
        return out


# --- assert_grads_finite -------------------------------------------------------------------


def test_grads_finite_passes_on_lenet(lenet: nn.Module, lenet_input: torch.Tensor) -> None:
    _backward(lenet, lenet_input)
    gt.assert_grads_finite(lenet)


def test_grads_finite_lists_every_bad_parameter(
    lenet: gradscope.LeNet, lenet_input: torch.Tensor
) -> None:
    _backward(lenet, lenet_input)
    assert lenet.fc3.bias.grad is not None and lenet.conv1.weight.grad is not None
    lenet.fc3.bias.grad[3] = float("nan")
    lenet.fc3.bias.grad[7] = float("nan")
    lenet.conv1.weight.grad[0, 0, 1, 2] = float("inf")
    lenet.conv1.weight.grad[5, 0, 4, 4] = -float("inf")
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grads_finite(lenet, msg="after step 3")
    text = _message(excinfo)
    assert text.startswith("after step 3\nassert_grads_finite: 2 of 10 gradients are not finite")
    assert "fc3.bias (10,): 2 NaN, 0 +Inf, 0 -Inf of 10 elements; first at index (3,) = nan" in text
    assert (
        "conv1.weight (6, 1, 5, 5): 0 NaN, 1 +Inf, 1 -Inf of 150 elements; "
        "first at index (0, 0, 1, 2) = inf" in text
    )
    assert text.splitlines()[-1].startswith("Hint: ")
    # ignore= skips them
    gt.assert_grads_finite(lenet, ignore=["fc3.*", "conv1.weight"])


@SETTINGS
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
        # non-finite values often, and several of them: the first one must be told apart
        elements=st.one_of(
            st.floats(width=32, allow_nan=False, allow_infinity=False),
            st.sampled_from([math.nan, math.inf, -math.inf]),
        ),
    )
)
@example(np.array([1.0, math.inf, 2.0, -math.inf], dtype=np.float32))  # Inf only, two of them
@example(np.array([[0.0, -math.inf], [math.nan, math.inf]], dtype=np.float32))
def test_grads_finite_counts_agree_with_numpy(values: np.ndarray) -> None:
    p = nn.Parameter(torch.zeros(values.shape))
    p.grad = torch.from_numpy(values.copy())
    if np.isfinite(values).all():
        gt.assert_grads_finite({"w": p})
        return
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grads_finite({"w": p})
    nan, pos, neg = (
        int(np.isnan(values).sum()),
        int(np.isposinf(values).sum()),
        int(np.isneginf(values).sum()),
    )
    first = np.unravel_index(int(np.flatnonzero(~np.isfinite(values))[0]), values.shape)
    where = tuple(int(i) for i in first)
    elements = "1 element" if values.size == 1 else f"{values.size} elements"
    expected = f"{nan} NaN, {pos} +Inf, {neg} -Inf of {elements}; first at index "
    assert f"{expected}{where} = {float(values[where])}" in _message(excinfo)


def test_grads_finite_needs_a_backward_first(lenet: nn.Module) -> None:
    with pytest.raises(GradientAssertionError, match=r"call loss\.backward"):
        gt.assert_grads_finite(lenet)


def test_grads_finite_mentions_a_non_finite_parameter() -> None:
    w = nn.Parameter(torch.tensor([1.0, float("nan"), 2.0]))
    (w**2).sum().backward()
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grads_finite({"w": w})
    assert "w (3,): 1 NaN, 0 +Inf, 0 -Inf of 3 elements; first at index (1,) = nan" in str(
        excinfo.value
    )
    assert "(the parameter itself holds 1 non-finite values)" in str(excinfo.value)


# --- assert_all_params_have_grad --------------------------------------------------------------


def test_have_grad_on_tied_transformer_names_only_the_unused_layer() -> None:
    net = TiedLM()
    net(torch.randint(0, 11, (2, 5))).sum().backward()
    # the oracle: a plain loop over named_parameters
    loop = sorted({n for n, p in net.named_parameters() if p.grad is None})
    assert loop == ["unused.bias", "unused.weight"]
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_all_params_have_grad(net)
    text = _message(excinfo)
    distinct = len(list(net.parameters()))  # parameters() lists the tied weight once
    assert f"2 of {distinct} trainable parameters have no usable gradient (2 without .grad" in text
    assert "unused.weight (8, 8): no gradient (.grad is None)" in text
    assert "unused.bias (8,): no gradient" in text
    assert "head.weight" not in text  # the tied alias resolves to embed.weight, which has one
    assert "not connected to the loss" in text
    gt.assert_all_params_have_grad(net, ignore="unused.*")


def test_have_grad_reports_zero_gradients_unless_allowed() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[1].weight.data.zero_()  # the first layer gets an all-zero gradient
    net(torch.randn(5, 3)).sum().backward()
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_all_params_have_grad(net)
    text = _message(excinfo)
    assert "0.weight (4, 3): gradient is all zeros (12 elements)" in text
    assert "0.bias (4,): gradient is all zeros (4 elements)" in text
    assert "allow_zero=True" in text
    gt.assert_all_params_have_grad(net, allow_zero=True)


def test_have_grad_skips_frozen_parameters(
    lenet: gradscope.LeNet, lenet_input: torch.Tensor
) -> None:
    lenet.conv1.requires_grad_(False)
    _backward(lenet, lenet_input)
    gt.assert_all_params_have_grad(lenet)


def test_have_grad_before_backward_says_so(lenet: nn.Module) -> None:
    with pytest.raises(GradientAssertionError, match=r"(?s)10 of 10 .* call loss\.backward"):
        gt.assert_all_params_have_grad(lenet)


# --- assert_grad_norms -------------------------------------------------------------------------


def test_grad_norms_per_param_against_numpy(
    lenet: gradscope.LeNet, lenet_input: torch.Tensor
) -> None:
    _backward(lenet, lenet_input)
    norms = {
        n: float(np.linalg.norm(p.grad.double().numpy().ravel()))  # type: ignore[union-attr]
        for n, p in lenet.named_parameters()
    }
    gt.assert_grad_norms(lenet, min=min(norms.values()) * 0.99, max=max(norms.values()) * 1.01)
    ordered = sorted(norms.values())
    cut = (ordered[4] + ordered[5]) / 2
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grad_norms(lenet, max=cut)
    text = _message(excinfo)
    over = {n: v for n, v in norms.items() if v > cut}
    assert f"{len(over)} of 10 gradient norms outside the bounds" in text
    for name, value in over.items():
        assert f"{name} " in text and f"gradient norm {value:.4g} > max={cut}" in text
    assert "exploding gradients" in text and "vanishing" not in text


def test_grad_norms_vanishing_names_element_and_index() -> None:
    net = nn.Linear(2, 2)
    net.weight.grad = torch.tensor([[1e-9, -3e-9], [0.0, 2e-9]])
    net.bias.grad = torch.tensor([1.0, 1.0])
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grad_norms(net, min=1e-6)
    text = _message(excinfo)
    norm = float(np.linalg.norm([1e-9, -3e-9, 0.0, 2e-9]))
    assert f"weight (2, 2): gradient norm {norm:.4g} < min=1e-06" in text
    assert "largest |element| 3e-09 at index (0, 1) of 4 elements" in text
    assert "bias" not in text.split("Hint")[0]
    assert "vanishing gradients" in text


def test_grad_norms_total_matches_clip_grad_norm(
    lenet: gradscope.LeNet, lenet_input: torch.Tensor
) -> None:
    _backward(lenet, lenet_input)
    total = float(torch.nn.utils.get_total_norm([p.grad for p in lenet.parameters()]))  # type: ignore[misc]
    gt.assert_grad_norms(lenet, max=total * 1.0001, per_param=False)
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grad_norms(lenet, max=total * 0.999, per_param=False)
    assert f"gradient norm {total:.4g} > max=" in _message(excinfo)
    numel = sum(p.numel() for p in lenet.parameters())
    assert f"total over 10 parameters ({numel},)" in _message(excinfo)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "pass min="),
        ({"min": 2.0, "max": 1.0}, "swap them"),
        ({"max": -1.0}, ">= 0"),
        ({"min": "small"}, "takes a number"),
    ],
)
def test_grad_norms_bad_bounds(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(GradscopeError, match=match):
        gt.assert_grad_norms(nn.Linear(2, 2), **kwargs)  # type: ignore[arg-type]


# --- assert_grads_close ------------------------------------------------------------------------


def test_grads_close_against_float64_copy(
    lenet: gradscope.LeNet, lenet_input: torch.Tensor
) -> None:
    ref = copy.deepcopy(lenet).double()
    _backward(lenet, lenet_input)
    _backward(ref, lenet_input.double())
    gt.assert_grads_close(lenet, ref)
    # a reference whose loss is scaled differently: every element of every gradient is off
    ref.zero_grad()
    (ref(lenet_input.double()).sum() * 1.5).backward()
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grads_close(lenet, ref)
    text = _message(excinfo)
    assert "10 of 10 gradients differ from expected (rtol=1.3e-06, atol=1e-05)" in text
    assert lenet.fc3.bias.grad is not None
    got = float(lenet.fc3.bias.grad[0])
    assert "fc3.bias (10,): mismatched elements: 10 / 10 (100.0%)" in text
    assert f"first at index (0,): got {got:.4g}, expected {got * 1.5:.4g}" in text


def test_grads_close_mapping_with_missing_and_extra_keys() -> None:
    net = nn.Linear(3, 2)
    net(torch.randn(4, 3)).sum().backward()
    with pytest.raises(GradscopeError, match=r"expected has no entry for \['bias'\]"):
        gt.assert_grads_close(net, {"weight": net.weight.grad})
    with pytest.raises(
        GradscopeError, match=r"names in expected are not the module's: \['biass'\]"
    ):
        gt.assert_grads_close(net, {"weight": net.weight.grad, "biass": net.bias.grad})
    with pytest.raises(GradientAssertionError, match=r"shape differs from expected \(3,\)"):
        gt.assert_grads_close(net, {"weight": net.weight.grad, "bias": torch.zeros(3)})
    with pytest.raises(GradientAssertionError, match="has a gradient, but expected has none"):
        gt.assert_grads_close(net, {"weight": net.weight.grad, "bias": None})
    with pytest.raises(GradscopeError, match="both rtol= and atol="):
        gt.assert_grads_close(net, {"weight": net.weight.grad}, rtol=1e-3)


def test_grads_close_reports_only_the_mismatched_elements() -> None:
    # as torch.testing: an Inf that equals its expected Inf, or a 0 that equals 0, is no
    # difference (before the fix: "greatest absolute difference inf at index (0,)", and 0 / 0
    # made the greatest relative difference inf at an element that matched)
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([math.inf, 0.0, 1.0])
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grads_close({"w": p}, {"w": torch.tensor([math.inf, 0.0, 1.5])})
    text = _message(excinfo)
    assert "mismatched elements: 1 / 3 (33.3%)" in text
    assert "greatest absolute difference 0.5 at index (2,)" in text
    assert "greatest relative difference 0.3333 at index (2,)" in text
    assert "first at index (2,): got 1, expected 1.5" in text
    # NaN against NaN mismatches (equal_nan=False) and counts as the worst difference
    p.grad = torch.tensor([1.0, math.nan, 1.0])
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grads_close({"w": p}, {"w": torch.tensor([1.0, math.nan, 2.0])})
    text = _message(excinfo)
    assert "greatest absolute difference inf at index (1,)" in text
    assert "greatest relative difference inf at index (1,)" in text


_FINITE = st.floats(-1e3, 1e3, width=32)
_RTOLS = [0.0, 1e-6, 1e-3, 0.1]
_ATOLS = [0.0, 1e-5, 0.5]
_ANY = st.one_of(_FINITE, st.sampled_from([math.nan, math.inf, -math.inf, 0.0]))


def _unique_max(got: np.ndarray, want: torch.Tensor, rtol: float, atol: float, kind: str) -> bool:
    """Whether one mismatched element alone has the greatest difference (numpy's arithmetic)."""
    g, w = got.astype(np.float64).reshape(-1), want.double().numpy().reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(g - w)
        if kind == "relative":
            diff = diff / np.abs(w)
    diff = np.where(np.isclose(g, w, rtol=rtol, atol=atol), 0.0, diff)
    top = np.nanmax(diff)
    return bool(np.sum(np.isclose(diff, top, rtol=1e-9, atol=0)) == 1)


@SETTINGS
@given(
    st.data(),
    hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
    st.sampled_from([torch.float32, torch.float64]),
    st.one_of(
        st.none(),
        st.tuples(st.sampled_from([0.0, 1e-6, 1e-3, 0.1]), st.sampled_from([0.0, 1e-5, 0.5])),
    ),
)
def test_grads_close_agrees_with_torch_testing(
    data: st.DataObject,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    tols: tuple[float, float] | None,
) -> None:
    got = data.draw(hnp.arrays(np.float32, shape, elements=_ANY))
    noise = data.draw(
        hnp.arrays(np.float32, shape, elements=st.sampled_from([0.0, 1e-7, 1e-4, 1.0]))
    )
    want = torch.from_numpy(got.astype(np.float64) * (1 + noise)).to(dtype)
    p = nn.Parameter(torch.zeros(shape))
    p.grad = torch.from_numpy(got.copy())
    rtol, atol = tols if tols is not None else (None, None)
    try:
        torch.testing.assert_close(p.grad, want, rtol=rtol, atol=atol, check_dtype=False)
    except AssertionError as err:
        with pytest.raises(GradientAssertionError) as excinfo:
            gt.assert_grads_close({"w": p}, {"w": want}, rtol=rtol, atol=atol)
        text = _message(excinfo)
        counts = re.search(r"Mismatched elements: (\d+) / (\d+)", str(err))
        assert counts is not None
        assert f"mismatched elements: {counts[1]} / {counts[2]}" in text
        # got is float32, so the default pair is float32's (the larger of the two dtypes')
        r, a = (rtol, atol) if rtol is not None and atol is not None else (1.3e-6, 1e-5)
        for kind, allowed in (("absolute", a), ("relative", r)):
            # torch.testing's greatest differences: the same value (NaN there, inf here), index
            theirs = re.search(rf"Greatest {kind} difference: (\S+) at index (\([^)]*\))", str(err))
            ours = re.search(
                rf"greatest {kind} difference (\S+) at index (\([^)]*\)) \(up to (\S+) allowed",
                text,
            )
            assert theirs is not None and ours is not None, text
            assert float(ours[3]) == allowed
            if theirs[1] == "nan":
                assert ours[1] == "inf"
                continue
            assert float(ours[1]) == pytest.approx(float(theirs[1]), rel=1e-3), text
            if _unique_max(got, want, r, a, kind):  # a tie may pick either index
                assert ours[2] == theirs[2], text
        # the first mismatch, by numpy's isclose (the same formula: |a - b| <= atol + rtol |b|)
        g64, w64 = got.astype(np.float64).reshape(-1), want.double().numpy().reshape(-1)
        first = int(np.flatnonzero(~np.isclose(g64, w64, rtol=r, atol=a))[0])
        index = tuple(int(i) for i in np.unravel_index(first, shape))
        found = re.search(
            rf"first at index {re.escape(str(index))}: got (\S+), expected (\S+)$", text, re.M
        )
        assert found is not None, (index, text)
        for shown, value in ((found[1], g64[first]), (found[2], w64[first])):
            assert float(shown) == pytest.approx(value, rel=1e-3, nan_ok=True)
    else:
        gt.assert_grads_close({"w": p}, {"w": want}, rtol=rtol, atol=atol)


# --- assert_gradcheck --------------------------------------------------------------------------


class _WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        out: torch.Tensor = grad * x  # should be 2 * x
        return out


class _WrongOnOneColumn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, w = ctx.saved_tensors  # type: ignore[attr-defined]
        gw = x.t() @ grad
        gw[:, 1] *= 2  # wrong only for column 1 of w
        return grad @ w.t(), gw


def _cases() -> list[tuple[str, object, tuple[torch.Tensor, ...]]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, 2, generator=g, dtype=torch.float64)
    return [
        ("tanh", torch.tanh, (x,)),
        ("matmul", torch.matmul, (x, w)),
        ("softmax", lambda t: torch.softmax(t, dim=1), (x,)),
        ("wrong square", _WrongSquare.apply, (x,)),
        ("wrong column", _WrongOnOneColumn.apply, (x, w)),
    ]


@pytest.mark.parametrize(("label", "fn", "inputs"), _cases(), ids=[c[0] for c in _cases()])
def test_gradcheck_verdict_agrees_with_torch(
    label: str, fn: object, inputs: tuple[torch.Tensor, ...]
) -> None:
    leaves = tuple(t.clone().requires_grad_(True) for t in inputs)
    torch_ok = torch.autograd.gradcheck(fn, leaves, raise_exception=False)  # type: ignore[arg-type]
    if torch_ok:
        gt.assert_gradcheck(fn, *[t.float() for t in inputs])  # type: ignore[arg-type]
    else:
        with pytest.raises(GradientAssertionError):
            gt.assert_gradcheck(fn, *[t.float() for t in inputs])  # type: ignore[arg-type]
    assert torch_ok == (not label.startswith("wrong"))


def test_gradcheck_names_input_and_element() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_gradcheck(_WrongOnOneColumn.apply, x, w)
    text = _message(excinfo)
    assert "disagree for 1 of 2 checked tensors" in text
    assert "input 1 (4, 2): 12 of 48 Jacobian entries disagree" in text  # 4 rows x 3 outputs
    worst = re.search(r"worst at element \((\d+), (\d+)\) -> output 0 index \((\d+), (\d+)\)", text)
    assert worst is not None and worst[2] == "1" and worst[4] == "1"
    row, out_row = int(worst[1]), int(worst[3])
    right = float(x[out_row, row])  # d (x @ w)[i, 1] / d w[k, 1] = x[i, k]
    assert f"finite difference {right:.4g}" in text
    assert f"autograd {2 * right:.4g}" in text
    assert "input 0" not in text


def test_gradcheck_checks_module_parameters_by_name() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _WrongSquare.apply(self.lin(x))  # type: ignore[no-any-return]

    gt.assert_gradcheck(nn.Sequential(nn.Linear(3, 2), nn.Tanh()), torch.randn(4, 3))
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_gradcheck(Scaled(), torch.randn(4, 3))
    text = _message(excinfo)
    assert "parameter lin.weight (2, 3)" in text and "parameter lin.bias (2,)" in text
    assert "input 0 (4, 3)" in text


def test_gradcheck_bad_input() -> None:
    with pytest.raises(GradscopeError, match="must be callable"):
        gt.assert_gradcheck(torch.zeros(2), torch.zeros(2))  # type: ignore[arg-type]
    with pytest.raises(GradscopeError, match="nothing to check"):
        gt.assert_gradcheck(lambda i: i * 1.0, torch.arange(3))
    with pytest.raises(GradscopeError, match="must return a tensor"):
        gt.assert_gradcheck(lambda t: "no", torch.zeros(2))


# --- assert_params_updated ---------------------------------------------------------------------


def test_params_updated_names_the_parameter_left_out_of_the_optimizer(
    lenet: gradscope.LeNet, lenet_input: torch.Tensor
) -> None:
    target = torch.randn(1, 10)
    left_out = {"fc2.bias"}
    opt = torch.optim.SGD([p for n, p in lenet.named_parameters() if n not in left_out], lr=0.01)

    returned: list[float] = []

    def step() -> float:
        opt.zero_grad()
        loss = nn.functional.mse_loss(lenet(lenet_input), target)
        loss.backward()
        opt.step()
        returned.append(float(loss.detach()))
        return returned[-1]

    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_params_updated(lenet, step)
    text = _message(excinfo)
    assert "1 of 10 parameters not updated as expected (1 unchanged, 0 frozen but changed)" in text
    assert "fc2.bias (84,): did not change (all 84 elements equal)" in text
    assert "is it in the optimizer?" in text
    before = lenet.fc1.weight.detach().clone()
    loss = gt.assert_params_updated(lenet, step, ignore="fc2.bias")
    assert len(returned) == 2 and loss is returned[1]  # step ran once more; its value came back
    assert not torch.equal(before, lenet.fc1.weight.detach())


def test_params_updated_reports_a_frozen_parameter_that_moved() -> None:
    net = nn.Linear(3, 2)
    before = net.bias.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x = torch.randn(4, 3)

    def step() -> None:
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()

    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_params_updated(net, step, frozen=["bias"])
    # the oracle: torch.optim.SGD moved each bias element by lr * 4 (sum over a batch of 4)
    change = (net.bias.detach() - before).abs()
    assert torch.allclose(change, torch.full((2,), 2.0))
    assert "bias (2,): changed though it is frozen (frozen= lists it): 2 of 2 elements" in (
        _message(excinfo)
    )
    worst = int((net.bias.detach().double() - before.double()).abs().argmax())
    assert f"largest change 2 at index ({worst},)" in _message(excinfo)


def test_params_updated_requires_grad_false_counts_as_frozen() -> None:
    net = nn.Linear(3, 2)
    net.bias.requires_grad_(False)

    def step() -> None:
        with torch.no_grad():
            net.bias.add_(1.0)
            net.weight.add_(1.0)

    with pytest.raises(
        GradientAssertionError,
        match=r"bias \(2,\): changed though it is frozen \(requires_grad=False\)",
    ):
        gt.assert_params_updated(net, step)


def test_params_updated_bad_step() -> None:
    net = nn.Linear(3, 2)
    with pytest.raises(GradscopeError, match=r"step, not step\(\)"):
        gt.assert_params_updated(net, None)  # type: ignore[arg-type]


# --- assert_no_grad ----------------------------------------------------------------------------


def test_no_grad_on_a_frozen_backbone(lenet: gradscope.LeNet, lenet_input: torch.Tensor) -> None:
    for p in [*lenet.conv1.parameters(), *lenet.conv2.parameters()]:
        p.requires_grad_(False)
    _backward(lenet, lenet_input)
    gt.assert_no_grad(lenet, ["conv1.*", "conv2.*"])
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_no_grad(lenet, ["conv*", "fc3.bias"])
    text = _message(excinfo)
    assert lenet.fc3.bias.grad is not None
    g = lenet.fc3.bias.grad.numpy()
    assert "1 of 5 parameters that must stay out of the graph has a gradient" in text
    assert (
        f"fc3.bias (10,): has a gradient: norm {np.linalg.norm(g):.4g}, largest |element| "
        f"{np.abs(g).max():.4g} at index ({int(np.abs(g).argmax())},), 10 of 10 elements non-zero"
    ) in text


def test_no_grad_allow_zero(lenet: gradscope.LeNet) -> None:
    lenet.fc3.bias.grad = torch.zeros(10)
    with pytest.raises(GradientAssertionError, match="0 of 10 elements non-zero"):
        gt.assert_no_grad(lenet, "fc3.bias")
    gt.assert_no_grad(lenet, "fc3.bias", allow_zero=True)
    gt.assert_no_grad(lenet, allow_zero=True)  # nothing else has a gradient


def test_no_grad_message_in_full() -> None:
    """Every word of the message, for numbers worked out by hand: [3, -4] has norm 5 and its
    largest |element| 4 at index 1; [[0], [2]] has norm 2, one non-zero element at (1, 0)."""
    a, b, c = (
        nn.Parameter(torch.zeros(2)),
        nn.Parameter(torch.zeros(2, 1)),
        nn.Parameter(torch.zeros(3)),
    )
    a.grad = torch.tensor([3.0, -4.0])
    b.grad = torch.tensor([[0.0], [2.0]])
    hint = (
        "Hint: keep a parameter out of the graph with param.requires_grad_(False), by using it "
        "under torch.no_grad() or by .detach()ing its output; a zero tensor left by "
        "zero_grad(set_to_none=False) passes with allow_zero=True"
    )
    row_a = "  a (2,): has a gradient: norm 5, largest |element| 4 at index (1,), "
    row_a += "2 of 2 elements non-zero"
    row_b = "  b (2, 1): has a gradient: norm 2, largest |element| 2 at index (1, 0), "
    row_b += "1 of 2 elements non-zero"
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_no_grad({"a": a, "b": b, "c": c}, msg="frozen")
    assert _message(excinfo) == "\n".join(
        [
            "frozen",
            "assert_no_grad: 2 of 3 parameters that must stay out of the graph have a gradient",
            row_a,
            row_b,
            hint,
        ]
    )
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_no_grad({"a": a, "b": b, "c": c}, ignore="b")
    assert _message(excinfo) == "\n".join(
        [
            "assert_no_grad: 1 of 2 parameters that must stay out of the graph has a gradient",
            row_a,
            hint,
        ]
    )
    # c has no gradient and b is allowed an all-zero one: checked one by one, not stopped early
    b.grad = torch.zeros(2, 1)
    gt.assert_no_grad({"c": c, "b": b}, allow_zero=True)
    with pytest.raises(GradientAssertionError, match=r"b \(2, 1\): has a gradient: norm 0,"):
        gt.assert_no_grad({"c": c, "b": b})
    with pytest.raises(GradscopeError, match=r"assert_no_grad: ignore= "):
        gt.assert_no_grad({"a": a}, ignore=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "function", ["assert_grads_finite", "assert_all_params_have_grad", "assert_grad_norms"]
)
def test_nothing_to_check_message_in_full(function: str) -> None:
    params = {"c": nn.Parameter(torch.zeros(3)), "d": nn.Parameter(torch.zeros(1))}
    with pytest.raises(GradientAssertionError) as excinfo:
        kwargs = {"max": 1.0} if function == "assert_grad_norms" else {}
        getattr(gt, function)(params, msg="step 3", **kwargs)
    text = _message(excinfo)
    if function == "assert_all_params_have_grad":  # says which ones instead
        assert text.startswith(f"step 3\n{function}: ")
        return
    assert text == (
        f"step 3\n{function}: none of the 2 parameters checked has a gradient\n"
        "Hint: none of the parameters has a gradient yet; call loss.backward() before asserting "
        "(or check that the loss depends on the model at all)"
    )


def test_norm_bounds_are_checked_and_zero_is_a_bound() -> None:
    a = nn.Parameter(torch.zeros(2))
    a.grad = torch.zeros(2)
    gt.assert_grad_norms({"a": a}, max=0.0)  # an all-zero gradient has norm 0 <= 0
    gt.assert_grad_norms({"a": a}, min=0)
    for kwargs, said in [
        ({"max": "x"}, "assert_grad_norms: max= takes a number, not str 'x'"),
        ({"min": True}, "assert_grad_norms: min= takes a number, not bool True"),
        ({"min": -1.0}, "assert_grad_norms: min=-1.0 is not a valid gradient norm; norms are >= 0"),
        (
            {"max": math.nan},
            "assert_grad_norms: max=nan is not a valid gradient norm; norms are >= 0",
        ),
    ]:
        with pytest.raises(GradscopeError) as excinfo:
            gt.assert_grad_norms({"a": a}, **kwargs)  # type: ignore[arg-type]
        assert str(excinfo.value) == said


def test_grad_norms_nan_total_and_bounds_at_the_edge() -> None:
    """Norms worked out by hand: [3, -4] -> 5, [nan, 1] -> nan, [0, 1] -> 1, [2, 0] -> 2."""
    grads = {"a": [3.0, -4.0], "b": [math.nan, 1.0], "c": [0.0, 1.0], "d": [2.0, 0.0]}
    params = {}
    for name, values in grads.items():
        params[name] = nn.Parameter(torch.zeros(2))
        params[name].grad = torch.tensor(values)
    # a NaN total names the allowed range and lists the NaN first, then the largest norms
    for kwargs, allowed in [({"max": 100}, "[0, 100]"), ({"min": 0.5}, "[0.5, inf]")]:
        with pytest.raises(GradientAssertionError) as excinfo:
            gt.assert_grad_norms(params, per_param=False, **kwargs)  # type: ignore[arg-type]
        assert (
            f"  total over 4 parameters (8,): gradient norm is nan (allowed: {allowed}); "
            "largest norms: b nan, a 5, d 2"
        ) in _message(excinfo).splitlines()
    # a norm equal to a bound is inside it; min == max is a valid range
    only_a = {"a": params["a"]}
    gt.assert_grad_norms(only_a, min=5.0, max=5.0)
    gt.assert_grad_norms(only_a, min=5, max=5, per_param=False)
    with pytest.raises(GradientAssertionError, match=r"a \(2,\): gradient norm 5 > max=4.99"):
        gt.assert_grad_norms(only_a, max=4.99)
    with pytest.raises(GradientAssertionError, match=r"a \(2,\): gradient norm 5 < min=5.01"):
        gt.assert_grad_norms(only_a, min=5.01)


def test_grad_norms_message_in_full() -> None:
    """Norms by hand: a 5, c 1, d 2, e 1.5; total sqrt(25 + 1 + 4 + 2.25) = 5.679."""
    params = {}
    for name, values in {
        "a": [3.0, -4.0],
        "c": [0.0, 1.0],
        "d": [2.0, 0.0],
        "e": [0.0, 1.5],
    }.items():
        params[name] = nn.Parameter(torch.zeros(2))
        params[name].grad = torch.tensor(values)
    vanishing = (
        "vanishing gradients: check the initialisation, saturating activations (sigmoid/tanh), "
        "deep stacks without residuals or normalisation, or a loss already near 0; lower min= "
        "if this size is expected"
    )
    exploding = (
        "exploding gradients: lower the learning rate, clip with "
        "torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm), or check the loss scale "
        "(sum instead of mean?); raise max= if this size is expected"
    )
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grad_norms(params, min=1.2, max=3, msg="m")
    assert _message(excinfo) == "\n".join(
        [
            "m",
            "assert_grad_norms: 2 of 4 gradient norms outside the bounds",
            "  a (2,): gradient norm 5 > max=3; largest |element| 4 at index (1,) of 2 elements",
            "  c (2,): gradient norm 1 < min=1.2; largest |element| 1 at index (1,) of 2 elements",
            f"Hint: {vanishing}; {exploding}",
        ]
    )
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_grad_norms(params, max=3, per_param=False)
    assert _message(excinfo) == "\n".join(
        [
            "assert_grad_norms: the total gradient norm is outside the bounds",
            "  total over 4 parameters (8,): gradient norm 5.679 > max=3; "
            "largest norms: a 5, d 2, e 1.5",
            f"Hint: {exploding}",
        ]
    )


# --- bad input, shared by all ------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: gt.assert_grads_finite(m),
        lambda m: gt.assert_all_params_have_grad(m),
        lambda m: gt.assert_grad_norms(m, max=1.0),
        lambda m: gt.assert_grads_close(m, {}),
        lambda m: gt.assert_params_updated(m, lambda: None),
        lambda m: gt.assert_no_grad(m),
    ],
)
def test_every_assertion_rejects_a_tensor_and_an_empty_module(call: object) -> None:
    with pytest.raises(GradscopeError, match="got a tensor of shape \\(3,\\)"):
        call(torch.zeros(3))  # type: ignore[operator]
    with pytest.raises(GradscopeError, match="has no parameters"):
        call(nn.ReLU())  # type: ignore[operator]
    with pytest.raises(GradscopeError, match="not int 5"):
        call(5)  # type: ignore[operator]


def test_unknown_names_suggest_the_close_ones(lenet: nn.Module) -> None:
    with pytest.raises(UnknownParameterError, match=r"did you mean 'fc3\.bias'"):
        gt.assert_no_grad(lenet, "fc3.bais")
    with pytest.raises(GradscopeError, match="not a tensor of shape"):
        gt.assert_grads_finite(lenet, ignore=torch.zeros(2))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda m: gt.assert_grads_finite(m),
        lambda m: gt.assert_all_params_have_grad(m),
        lambda m: gt.assert_grad_norms(m, max=1.0),
        lambda m: gt.assert_grads_close(m, {}),
        lambda m: gt.assert_params_updated(m, lambda: None),
        lambda m: gt.assert_no_grad(m),
        lambda m: gt.assert_step_matches_reference(torch.optim.SGD([nn.Parameter(m)], lr=0.1), 5),
    ],
)
def test_pytest_hides_the_assertions_frames(call: object) -> None:
    """``__tracebackhide__`` is set, and true, in each assertion's frame when it raises (read
    from the frame by a tracer, so it holds whatever wraps the function)."""
    import sys

    values: list[object] = []

    def tracer(frame: object, event: str, arg: object) -> object:
        code = frame.f_code  # type: ignore[attr-defined]
        if "gradscope" in code.co_filename and "__tracebackhide__" in code.co_varnames:
            if event == "exception" and "function" in frame.f_locals:  # type: ignore[attr-defined]
                values.append(frame.f_locals.get("__tracebackhide__"))  # type: ignore[attr-defined]
            return tracer
        return None

    sys.settrace(tracer)  # type: ignore[arg-type]
    try:
        with pytest.raises(GradscopeError):
            call(torch.zeros(3))  # type: ignore[operator]
    finally:
        sys.settrace(None)
    assert values and all(v is True for v in values), values


@pytest.mark.parametrize("name", gt.__all__)
def test_every_assertion_hides_its_frames(name: str) -> None:
    # unwrap: under `make mutate` each function sits behind mutmut's trampoline
    assert "__tracebackhide__" in inspect.unwrap(getattr(gt, name)).__code__.co_varnames


# --- assert_step_matches_reference -------------------------------------------------------------


class _DoubleStepSGD(torch.optim.SGD):
    """A buggy optimizer: applies the SGD update twice."""

    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["lr"])


def _training_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor):  # type: ignore[no-untyped-def]
    def step() -> torch.Tensor:
        opt.zero_grad()
        loss = net(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def test_step_matches_reference_passes_for_torch_adam(
    lenet: gradscope.LeNet, lenet_input: torch.Tensor
) -> None:
    opt = torch.optim.Adam(lenet.parameters(), lr=1e-3, amsgrad=True)
    step = _training_step(lenet, opt, lenet_input)
    returned: list[torch.Tensor] = []

    def counted() -> torch.Tensor:
        returned.append(step())
        return returned[-1]

    assert gt.assert_step_matches_reference(opt, counted, params=lenet) is returned[0]
    # the second step, with state: torch's Adam counted both steps
    assert gt.assert_step_matches_reference(opt, counted, params=lenet) is returned[1]
    assert float(opt.state[lenet.fc3.bias]["step"]) == 2.0


def test_step_matches_reference_names_every_parameter_of_a_buggy_optimizer(
    lenet: gradscope.LeNet, lenet_input: torch.Tensor
) -> None:
    opt = _DoubleStepSGD(lenet.parameters(), lr=0.1)
    step = _training_step(lenet, opt, lenet_input)
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_step_matches_reference(opt, step, params=lenet, msg="buggy")
    text = _message(excinfo)
    assert text.startswith("buggy\nassert_step_matches_reference: _DoubleStepSGD.step() does not")
    assert "10 of 10 parameters failed" in text
    # oracle: the extra update is exactly lr * grad, so the worst difference is lr * max|grad|
    assert lenet.fc3.bias.grad is not None
    extra = 0.1 * float(lenet.fc3.bias.grad.abs().max())
    line = next(line for line in text.splitlines() if line.startswith("  fc3.bias (10,): "))
    found = re.search(r"max abs diff (\S+) \(tolerance (\S+)\), (\S+) of the step", line)
    assert found is not None, line
    assert float(found[1]) == pytest.approx(extra, rel=1e-3)
    assert float(found[2]) < extra / 100
    assert float(found[3]) == pytest.approx(1.0, rel=1e-3)  # off by one whole step


def test_step_matches_reference_names_a_parameter_left_out(
    lenet: gradscope.LeNet, lenet_input: torch.Tensor
) -> None:
    opt = torch.optim.SGD([p for n, p in lenet.named_parameters() if n != "fc2.bias"], lr=0.1)
    with pytest.raises(GradientAssertionError) as excinfo:
        gt.assert_step_matches_reference(opt, _training_step(lenet, opt, lenet_input), lenet)
    text = _message(excinfo)
    assert "1 of 10 parameters failed" in text
    assert "  fc2.bias (84,): " in text and "no param group" in text


def test_step_matches_reference_bad_input(lenet: gradscope.LeNet) -> None:
    opt = torch.optim.SGD(lenet.parameters(), lr=0.1)
    with pytest.raises(GradscopeError, match=r"step, not step\(\)"):
        gt.assert_step_matches_reference(opt, 3)  # type: ignore[arg-type]
    with pytest.raises(GradscopeError, match=r"takes a torch\.optim\.Optimizer"):
        gt.assert_step_matches_reference(lenet, lambda: None)  # type: ignore[arg-type]
    adafactor = torch.optim.Adafactor(lenet.parameters())
    lenet(torch.randn(1, 1, 32, 32)).sum().backward()
    with pytest.raises(GradscopeError, match="no built-in reference rule for Adafactor"):
        gt.assert_step_matches_reference(adafactor, adafactor.step)
