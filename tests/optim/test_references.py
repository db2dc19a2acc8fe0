"""The reference update rules against torch.optim (the oracle) and against numpy by hand."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_cases import OPTIMIZERS, dtypes, implementation, make_params, set_random_grads, shapes
from torch import optim

from gradscope._optim import references as _references
from gradscope._optim.references import adagrad, adam, adamw, builtin_reference, rmsprop, sgd
from gradscope._optim.tolerance import tolerance


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@settings(max_examples=12, deadline=None)
@given(data=st.data(), shape_list=shapes, dtype=dtypes)
def test_reference_matches_torch_optim_over_22_steps(
    name: str, data: st.DataObject, shape_list: list[tuple[int, ...]], dtype: torch.dtype
) -> None:
    cls, hyper, fused_ok = OPTIMIZERS[name]
    kwargs = data.draw(hyper) | data.draw(implementation(fused_ok))
    params = make_params(shape_list, dtype)
    opt = cls(params, **kwargs)
    text, rule = builtin_reference(opt) or pytest.fail(f"no reference for {name}")
    assert name in text
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    for step in range(22):
        set_random_grads(params, step)
        expected = [
            rule(p.detach().clone(), p.grad.clone(), _copy_state(opt.state.get(p, {})), group)
            for p in params
        ]
        befores = [p.detach().clone() for p in params]
        opt.step()
        for p, before, want in zip(params, befores, expected, strict=True):
            diff = float((p.detach() - want).abs().max()) if p.numel() else 0.0
            assert diff <= tolerance(before, want), (name, kwargs, step, diff)


def test_plain_sgd_is_the_tutorials_p_minus_lr_grad() -> None:
    p, g = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(sgd(p, g, {}, {"lr": 0.01}), p - 0.01 * g)


def test_sgd_momentum_by_hand_in_numpy() -> None:
    p, g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([-1.0, 2.0])
    lr, mu, damp, wd = 0.1, 0.9, 0.2, 0.01
    d1 = g1 + wd * p
    buf = d1  # first step: the buffer is the gradient itself
    p1 = p - lr * buf
    d2 = g2 + wd * p1
    buf = mu * buf + (1 - damp) * d2
    p2 = p1 - lr * buf
    group = {"lr": lr, "momentum": mu, "dampening": damp, "weight_decay": wd}
    t = torch.tensor
    got1 = sgd(t(p), t(g1), {}, group)
    got2 = sgd(got1, t(g2), {"momentum_buffer": t(d1)}, group)
    np.testing.assert_allclose(got1.numpy(), p1, rtol=1e-12)
    np.testing.assert_allclose(got2.numpy(), p2, rtol=1e-12)


def test_adam_first_step_moves_by_lr_times_the_sign() -> None:
    # With zero state, m_hat = g and v_hat = g*g, so the step is lr * g / (|g| + eps).
    g = torch.tensor([3.0, -0.5, 1e-3], dtype=torch.float64)
    out = adam(torch.zeros(3, dtype=torch.float64), g, {}, {"lr": 0.1, "eps": 0.0})
    np.testing.assert_allclose(out.numpy(), [-0.1, 0.1, -0.1], rtol=1e-12)


def test_adamw_decays_the_parameter_not_the_gradient() -> None:
    p, g = torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    group = {"lr": 0.1, "weight_decay": 0.5, "eps": 0.0}
    # p * (1 - lr * wd) - lr * sign(g) = 2 * 0.95 - 0.1
    assert float(adamw(p, g, {}, group)) == pytest.approx(1.8, abs=1e-12)
    assert float(adam(p, g, {}, group | {"decoupled_weight_decay": True})) == pytest.approx(1.8)
    assert float(adam(p, g, {}, group)) == pytest.approx(1.9)  # L2: g + wd * p, then sign


def test_rmsprop_centered_and_adagrad_by_hand_in_numpy() -> None:
    g = np.array([2.0, -1.0])
    sq = 0.5 * 0.0 + 0.5 * g * g
    ga = 0.5 * g
    want = -0.1 * g / (np.sqrt(sq - ga * ga) + 1e-8)
    group = {"lr": 0.1, "alpha": 0.5, "centered": True}
    got = rmsprop(torch.zeros(2, dtype=torch.float64), torch.tensor(g), {}, group)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    state = {"step": torch.tensor(4.0), "sum": torch.tensor([1.0, 1.0], dtype=torch.float64)}
    clr = 0.1 / (1 + 4 * 0.5)
    want = -clr * g / (np.sqrt(1.0 + g * g) + 1e-10)
    got = adagrad(
        torch.zeros(2, dtype=torch.float64), torch.tensor(g), state, {"lr": 0.1, "lr_decay": 0.5}
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_rules_do_not_modify_their_inputs() -> None:
    p = torch.nn.Parameter(torch.randn(5))
    opt = optim.Adam([p], lr=0.1, amsgrad=True)
    p.grad = torch.randn(5)
    opt.step()
    state = _copy_state(opt.state[p])
    kept = _copy_state(state)
    x, g = p.detach().clone(), p.grad.clone()
    adam(x, g, state, opt.param_groups[0])
    assert torch.equal(x, p.detach()) and torch.equal(g, p.grad)
    assert all(torch.equal(state[k], kept[k]) for k in state)


def test_builtin_reference_follows_the_class_hierarchy() -> None:
    class MySGD(optim.SGD):
        pass

    w = [torch.zeros(1, requires_grad=True)]
    text, rule = builtin_reference(MySGD(w, lr=0.1)) or pytest.fail("MySGD has SGD's rule")
    assert rule is sgd and "MySGD subclasses it" in text
    assert builtin_reference(optim.AdamW(w))[1] is adamw  # type: ignore[index]
    assert builtin_reference(optim.NAdam(w)) is None


def test_tensor_hyperparameters_are_accepted() -> None:
    p = torch.nn.Parameter(torch.randn(3))
    opt = optim.Adam([p], lr=torch.tensor(0.01))
    p.grad = torch.randn(3)
    want = adam(p.detach().clone(), p.grad, {}, opt.param_groups[0])
    before = p.detach().clone()
    opt.step()
    assert float((p.detach() - want).abs().max()) <= tolerance(before, want)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(_references).failed == 0
