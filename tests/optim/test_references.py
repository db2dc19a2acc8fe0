"""The reference rules against torch.optim (the oracle) and against numpy by hand."""

from __future__ import annotations

import doctest
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_cases import OPTIMIZERS, dtypes, implementation, make_params, set_random_grads, shapes
from torch import optim

from gradscope._optim import references as _references
from gradscope._optim.arrays import Many, Pool
from gradscope._optim.batch import SCALARS
from gradscope._optim.references import (
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    asgd,
    builtin_reference,
    nadam,
    radam,
    rmsprop,
    rprop,
    sgd,
    sparse_adam,
)


def _rule_state(state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's state as a rule reads it: scalars as floats, tensors as copies."""
    return {
        k: float(v) if k in SCALARS else (v.clone() if isinstance(v, torch.Tensor) else v)
        for k, v in state.items()
    }


# The documented bound, written out here rather than taken from gradscope._optim.tolerance (the
# module under test): c * eps(dtype) * (max|p before| + max|update| + the rule's sensitivity),
# c = 8 for float32/float64.
C = 8.0


def _bound(before: torch.Tensor, want: torch.Tensor) -> float:
    return C * torch.finfo(before.dtype).eps * (_max(before) + _max(want - before))


def _max(t: Any) -> float:
    if not isinstance(t, torch.Tensor):
        return abs(float(t))
    return float(t.abs().max()) if t.numel() else 0.0


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@settings(max_examples=10, deadline=None)
@given(data=st.data(), shape_list=shapes, dtype=dtypes)
def test_reference_matches_torch_optim_params_and_state_over_22_steps(
    name: str, data: st.DataObject, shape_list: list[tuple[int, ...]], dtype: torch.dtype
) -> None:
    cls, hyper, fused_ok = OPTIMIZERS[name]
    kwargs = data.draw(hyper) | data.draw(implementation(fused_ok))
    params = make_params(shape_list, dtype)
    opt = cls(params, **kwargs)
    rule = builtin_reference(opt) or pytest.fail(f"no reference for {name}")
    assert name in rule.text
    eps = torch.finfo(dtype).eps
    if name in ("NAdam", "ASGD"):  # torch keeps mu_product / eta, mu in float32 even for float64
        eps = max(eps, torch.finfo(torch.float32).eps)
    for step in range(22):
        set_random_grads(params, step)
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        olds = [_rule_state(opt.state.get(p, {})) for p in params]
        updates = [
            rule.function(p.detach().clone(), p.grad.clone(), old, group)
            for p, old in zip(params, olds, strict=True)
        ]
        befores = [p.detach().clone() for p in params]
        opt.step()
        for p, before, old, update in zip(params, befores, olds, updates, strict=True):
            where = (name, kwargs, step)
            change = _max(update.param - before)
            tol = C * eps * (_max(before) + change + _max(update.error.get("param", 0.0)))
            assert _max(p.detach() - update.param) <= tol, where
            # torch keeps exactly the entries the rule keeps, with the same values
            assert set(opt.state[p]) == set(update.state), where
            for key, want in update.state.items():
                got = opt.state[p][key]
                if key in SCALARS:
                    assert float(got) == pytest.approx(want, rel=1e-6), (*where, key)
                    continue
                scale = _max(want) + _max(old.get(key, 0.0)) + _max(update.error.get(key, 0.0))
                assert _max(got - want) <= C * eps * scale, (*where, key)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_a_whole_group_at_once_equals_one_tensor_at_a_time(name: str, data: st.DataObject) -> None:
    cls, hyper, _ = OPTIMIZERS[name]
    params = make_params([(3, 4), (5,), ()], torch.float32)
    opt = cls(params, **data.draw(hyper))
    rule = builtin_reference(opt)
    assert rule is not None
    for step in range(3):
        set_random_grads(params, step)
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        states = [_rule_state(opt.state.get(p, {})) for p in params]
        singles = [
            rule.function(p.detach(), p.grad, s, group) for p, s in zip(params, states, strict=True)
        ]
        scalars = {k: v for k, v in states[0].items() if k in SCALARS}
        arrays = {k: Many([s[k] for s in states]) for k in states[0] if k not in SCALARS}
        grads = Many([p.grad for p in params])
        many = rule.function(Many([p.detach() for p in params]), grads, arrays | scalars, group)
        for i, single in enumerate(singles):
            torch.testing.assert_close(many.param.tensors[i], single.param, rtol=0, atol=1e-6)
            for key, value in single.state.items():
                other = many.state[key]
                got = other.tensors[i] if isinstance(other, Many) else other
                torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(value))
        opt.step()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_rules_do_not_modify_their_inputs(name: str, data: st.DataObject) -> None:
    cls, hyper, _ = OPTIMIZERS[name]
    p = torch.nn.Parameter(torch.randn(5))
    opt = cls([p], **data.draw(hyper))
    for _ in range(2):
        p.grad = torch.randn(5)
        opt.step()
    state = _rule_state(opt.state[p])
    kept = _rule_state(state)
    x, g = p.detach().clone(), p.grad.clone()
    rule = builtin_reference(opt)
    assert rule is not None
    rule.function(x, g, state, dict(opt.param_groups[0]))
    assert torch.equal(x, p.detach()) and torch.equal(g, p.grad)
    for key, value in kept.items():
        assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(value)), key


def test_sparse_adam_matches_torch_on_an_embedding() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = optim.SparseAdam(emb.parameters(), lr=0.05)
    for step in range(6):
        opt.zero_grad()
        emb(torch.tensor([step % 4, 3, 3, 7])).pow(2).sum().backward()
        state = _rule_state(opt.state.get(emb.weight, {}))
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        update = sparse_adam(emb.weight.detach().clone(), emb.weight.grad, state, group)
        before = emb.weight.detach().clone()
        opt.step()
        diff = float((emb.weight.detach() - update.param).abs().max())
        assert diff <= _bound(before, update.param), step
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[emb.weight][key], update.state[key])
        untouched = [r for r in range(10) if r not in (step % 4, 3, 7)]
        assert torch.equal(emb.weight.detach()[untouched], before[untouched])


# ---- by hand, from the docstrings' pseudo-code, in numpy ------------------------------------


def test_plain_sgd_is_the_tutorials_p_minus_lr_grad() -> None:
    p, g = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(sgd(p, g, {}, {"lr": 0.01}).param, p - 0.01 * g)


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
    got2 = sgd(got1.param, t(g2), {"momentum_buffer": got1.state["momentum_buffer"]}, group)
    np.testing.assert_allclose(got1.param.numpy(), p1, rtol=1e-12)
    np.testing.assert_allclose(got2.param.numpy(), p2, rtol=1e-12)
    np.testing.assert_allclose(got2.state["momentum_buffer"].numpy(), buf, rtol=1e-12)


def test_adam_first_step_moves_by_lr_times_the_sign() -> None:
    # With zero state, m_hat = g and v_hat = g*g, so the step is lr * g / (|g| + eps).
    g = torch.tensor([3.0, -0.5, 1e-3], dtype=torch.float64)
    out = adam(torch.zeros(3, dtype=torch.float64), g, {}, {"lr": 0.1, "eps": 0.0})
    np.testing.assert_allclose(out.param.numpy(), [-0.1, 0.1, -0.1], rtol=1e-12)
    assert out.state["step"] == 1.0
    np.testing.assert_allclose(out.state["exp_avg"].numpy(), 0.1 * g.numpy())


def test_adamw_decays_the_parameter_not_the_gradient() -> None:
    p, g = torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    group = {"lr": 0.1, "weight_decay": 0.5, "eps": 0.0}
    # p * (1 - lr * wd) - lr * sign(g) = 2 * 0.95 - 0.1
    assert float(adamw(p, g, {}, group).param) == pytest.approx(1.8, abs=1e-12)
    decoupled = group | {"decoupled_weight_decay": True}
    assert float(adam(p, g, {}, decoupled).param) == pytest.approx(1.8)
    assert float(adam(p, g, {}, group).param) == pytest.approx(1.9)  # L2: g + wd * p, then sign


def test_nadam_by_hand_in_numpy() -> None:
    b1, b2, lr, eps, psi = 0.9, 0.999, 0.01, 1e-8, 4e-3
    p, gs = np.array([1.0, -1.0]), [np.array([0.3, -0.2]), np.array([-0.1, 0.4])]
    m, v, prod = np.zeros(2), np.zeros(2), 1.0
    state: dict[str, Any] = {}
    x = torch.tensor(p)
    for t, g in enumerate(gs, start=1):
        mu, mu_next = b1 * (1 - 0.5 * 0.96 ** (t * psi)), b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        prod *= mu
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat = mu_next * m / (1 - prod * mu_next) + (1 - mu) * g / (1 - prod)
        p = p - lr * m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
        out = nadam(x, torch.tensor(g), state, {"lr": lr})
        x, state = out.param, out.state
        np.testing.assert_allclose(x.numpy(), p, rtol=1e-12)
        assert state["mu_product"] == pytest.approx(prod, rel=1e-12)


def test_radam_is_plain_momentum_until_rho_exceeds_5() -> None:
    b1, b2, lr = 0.9, 0.999, 0.1
    rho_inf = 2 / (1 - b2) - 1
    g = torch.tensor([0.5], dtype=torch.float64)
    state: dict[str, Any] = {}
    x = torch.zeros(1, dtype=torch.float64)
    m, v = 0.0, 0.0
    for t in range(1, 9):
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        m, v = b1 * m + (1 - b1) * 0.5, b2 * v + (1 - b2) * 0.25
        m_hat = m / (1 - b1**t)
        if rho > 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            step = lr * m_hat * r * math.sqrt(1 - b2**t) / (math.sqrt(v) + 1e-8)
        else:
            step = lr * m_hat
        out = radam(x, g, state, {"lr": lr})
        assert float(x - out.param) == pytest.approx(step, rel=1e-10), t
        x, state = out.param, out.state


def test_adamax_adadelta_rprop_asgd_by_hand() -> None:
    g = torch.tensor([2.0, -1.0], dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    # Adamax, first step: u = |g| + eps, step = lr * (1 - beta1) g / ((1 - beta1) u)
    out = adamax(zero, g, {}, {"lr": 0.1, "eps": 0.0})
    np.testing.assert_allclose(out.param.numpy(), [-0.1, 0.1], rtol=1e-12)
    # Adadelta, first step: delta = sqrt(eps) / sqrt((1 - rho) g^2 + eps) * g
    rho, eps = 0.9, 1e-6
    delta = np.sqrt(eps) / np.sqrt((1 - rho) * g.numpy() ** 2 + eps) * g.numpy()
    out = adadelta(zero, g, {}, {"lr": 1.0, "rho": rho, "eps": eps})
    np.testing.assert_allclose(out.param.numpy(), -delta, rtol=1e-12)
    np.testing.assert_allclose(out.state["acc_delta"].numpy(), (1 - rho) * delta**2, rtol=1e-12)
    # Rprop: the same sign grows the step size, a flipped sign shrinks it and does not move
    state = {"prev": torch.tensor([1.0, 1.0], dtype=torch.float64), "step": 3.0}
    state["step_size"] = torch.tensor([0.1, 0.1], dtype=torch.float64)
    out = rprop(zero, g, state, {"lr": 0.1})
    np.testing.assert_allclose(out.state["step_size"].numpy(), [0.12, 0.05])
    np.testing.assert_allclose(out.param.numpy(), [-0.12, 0.0])
    np.testing.assert_allclose(out.state["prev"].numpy(), [2.0, 0.0])
    # ASGD: step with eta, then average from t0 on with weight mu
    group = {"lr": 0.1, "lambd": 0.0, "alpha": 0.75, "t0": 1.0}
    state = {
        "step": 2.0,
        "eta": 0.1,
        "mu": 0.5,
        "ax": torch.tensor([1.0, 1.0], dtype=torch.float64),
    }
    out = asgd(zero, g, state, group)
    np.testing.assert_allclose(out.param.numpy(), [-0.2, 0.1])
    np.testing.assert_allclose(out.state["ax"].numpy(), [0.4, 0.55])
    assert out.state["mu"] == pytest.approx(1 / 2) and out.state["step"] == 3.0


def test_rmsprop_centered_and_adagrad_by_hand_in_numpy() -> None:
    g = np.array([2.0, -1.0])
    sq = 0.5 * 0.0 + 0.5 * g * g
    ga = 0.5 * g
    want = -0.1 * g / (np.sqrt(sq - ga * ga) + 1e-8)
    group = {"lr": 0.1, "alpha": 0.5, "centered": True}
    got = rmsprop(torch.zeros(2, dtype=torch.float64), torch.tensor(g), {}, group)
    np.testing.assert_allclose(got.param.numpy(), want, rtol=1e-12)
    state = {"step": 4.0, "sum": torch.tensor([1.0, 1.0], dtype=torch.float64)}
    clr = 0.1 / (1 + 4 * 0.5)
    want = -clr * g / (np.sqrt(1.0 + g * g) + 1e-10)
    got = adagrad(
        torch.zeros(2, dtype=torch.float64), torch.tensor(g), state, {"lr": 0.1, "lr_decay": 0.5}
    )
    np.testing.assert_allclose(got.param.numpy(), want, rtol=1e-12)


def test_builtin_reference_follows_the_class_hierarchy() -> None:
    class MySGD(optim.SGD):
        pass

    w = [torch.zeros(1, requires_grad=True)]
    rule = builtin_reference(MySGD(w, lr=0.1)) or pytest.fail("MySGD has SGD's rule")
    assert rule.function is sgd and "MySGD subclasses it" in rule.text
    assert builtin_reference(optim.AdamW(w)).function is adamw  # type: ignore[union-attr]
    assert builtin_reference(optim.NAdam(w)).function is nadam  # type: ignore[union-attr]
    assert builtin_reference(optim.LBFGS(w)) is None
    assert builtin_reference(optim.Adafactor(w)) is None


def test_tensor_hyperparameters_are_accepted() -> None:
    p = torch.nn.Parameter(torch.randn(3))
    opt = optim.Adam([p], lr=torch.tensor(0.01), betas=(torch.tensor(0.9), torch.tensor(0.99)))
    p.grad = torch.randn(3)
    want = adam(p.detach().clone(), p.grad, {}, opt.param_groups[0]).param
    before = p.detach().clone()
    opt.step()
    assert float((p.detach() - want).abs().max()) <= _bound(before, want)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(_references).failed == 0


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_pooled_buffers_give_the_same_results(name: str, data: st.DataObject) -> None:
    # above 2**18 elements per group Many writes into reused buffers through out=
    cls, hyper, _ = OPTIMIZERS[name]
    params = make_params([(400, 400), (400,), ()], torch.float32)
    opt = cls(params, **data.draw(hyper))
    rule = builtin_reference(opt)
    assert rule is not None
    pool = Pool()
    for step in range(3):
        set_random_grads(params, step)
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        states = [_rule_state(opt.state.get(p, {})) for p in params]
        scalars = {k: v for k, v in states[0].items() if k in SCALARS}
        plain, pooled = (
            rule.function(
                Many([p.detach() for p in params], use),
                Many([p.grad for p in params], use),
                {k: Many([s[k] for s in states], use) for k in states[0] if k not in SCALARS}
                | scalars,
                group,
            )
            for use in (None, pool)
        )
        for a, b in zip(plain.param.tensors, pooled.param.tensors, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        pool.release()
        opt.step()
