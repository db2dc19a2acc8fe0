"""The reference rules against torch.optim's defaults and against numbers worked out by hand.

Each expectation comes from torch.optim stepping the same values, or from the documented
update rule evaluated here in numpy / plain Python, never from another gradscope function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import optim

from gradscope._optim.rules import adam as adam_rules
from gradscope._optim.rules import adaptive as adaptive_rules
from gradscope._optim.rules import sgd as sgd_rules
from gradscope._optim.rules.base import Update

Rule = Callable[[Any, Any, dict[str, Any], dict[str, Any]], Update[Any]]
_SCALARS = ("step", "mu_product", "eta", "mu")

# torch class, the rule, and lr; everything else is left to the defaults of both (a rule is
# given torch's full param group in use: these are its fallbacks, and they match torch's)
DEFAULTS: dict[str, tuple[type[optim.Optimizer], Rule, float]] = {
    "SGD": (optim.SGD, sgd_rules.sgd, 0.1),
    "ASGD": (optim.ASGD, sgd_rules.asgd, 0.1),
    "Rprop": (optim.Rprop, sgd_rules.rprop, 0.01),
    "Adam": (optim.Adam, adam_rules.adam, 0.1),
    "AdamW": (optim.AdamW, adam_rules.adamw, 0.1),
    "NAdam": (optim.NAdam, adam_rules.nadam, 0.1),
    "RAdam": (optim.RAdam, adam_rules.radam, 0.1),
    "Adamax": (optim.Adamax, adam_rules.adamax, 0.1),
    "RMSprop": (optim.RMSprop, adaptive_rules.rmsprop, 0.01),
    "Adagrad": (optim.Adagrad, adaptive_rules.adagrad, 0.1),
    "Adadelta": (optim.Adadelta, adaptive_rules.adadelta, 1.0),
}


def _grads(step: int) -> torch.Tensor:
    """Gradients that flip sign now and then (Rprop) and change scale (the moments)."""
    base = torch.tensor([0.3, -1.2, 2.5, -0.05, 0.0], dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0], dtype=torch.float64) ** step
    return base * signs * (1.0 + 0.5 * math.sin(step))


def _rule_state(state: dict[str, Any]) -> dict[str, Any]:
    return {
        k: float(v) if k in _SCALARS else (v.clone() if isinstance(v, torch.Tensor) else v)
        for k, v in state.items()
    }


def _close(got: Any, want: Any, where: object) -> None:
    if isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12, msg=lambda m: f"{where}: {m}")
    else:  # torch keeps some scalars (NAdam's mu_product, ASGD's eta) in float32
        assert float(got) == pytest.approx(want, rel=1e-6, abs=1e-30), where


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_a_group_with_only_lr_follows_torchs_defaults(name: str) -> None:
    cls, rule, lr = DEFAULTS[name]
    p = torch.nn.Parameter(torch.tensor([1.0, -0.5, 2.0, 0.25, -3.0], dtype=torch.float64))
    opt = cls([p], lr=lr)
    group = {"lr": lr}  # AdamW too: its rule falls back to torch's 1e-2, not Adam's 0
    for step in range(12):  # RAdam's rectification starts at step 6 with the default betas
        p.grad = _grads(step)
        update = rule(p.detach().clone(), p.grad.clone(), _rule_state(opt.state[p]), group)
        opt.step()
        _close(p.detach(), update.param, (name, step, "param"))
        assert set(update.state) == set(opt.state[p]), (name, step)
        for key, want in update.state.items():
            _close(opt.state[p][key], want, (name, step, key))


def _follow_torch(name: str, p: torch.nn.Parameter, hyper: dict[str, Any], steps: int) -> None:
    """Step torch.optim and the rule side by side from the same values; compare every result."""
    cls, rule, _ = DEFAULTS[name]
    opt = cls([p], **hyper)
    for step in range(steps):
        p.grad = _grads(step)[: p.numel()]
        update = rule(p.detach().clone(), p.grad.clone(), _rule_state(opt.state[p]), hyper)
        opt.step()
        _close(p.detach(), update.param, (name, step, "param"))
        for key, want in update.state.items():
            _close(opt.state[p][key], want, (name, step, key))


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_a_parameter_holding_inf_stays_inf_without_weight_decay_as_in_torch(name: str) -> None:
    # without weight decay the parameter never enters the gradient: 0 * inf would be NaN
    lr = DEFAULTS[name][2]
    hyper: dict[str, Any] = {"lr": lr} | ({"weight_decay": 0.0} if name != "Rprop" else {})
    p = torch.nn.Parameter(torch.tensor([math.inf, -math.inf, 1.0], dtype=torch.float64))
    _follow_torch(name, p, hyper, steps=3)
    assert p.detach()[:2].tolist() == [math.inf, -math.inf]  # torch's own result, for the record


@pytest.mark.parametrize("name", [n for n in DEFAULTS if n != "Rprop"])
def test_a_weight_decay_of_exactly_1_is_applied_as_in_torch(name: str) -> None:
    lr = DEFAULTS[name][2]
    p = torch.nn.Parameter(torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64))
    _follow_torch(name, p, {"lr": lr, "weight_decay": 1.0}, steps=3)


# ---- SGD -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hyper",
    [
        {"lr": 0.1},
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True},
    ],
)
def test_sgd_change_is_the_update_torch_makes(hyper: dict[str, Any]) -> None:
    """``Update.change = (factor, array)`` with ``param - before == factor * array``."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = optim.SGD([p], **hyper)
    for step in range(3):
        p.grad = _grads(step)[:3]
        before = p.detach().clone()
        update = sgd_rules.sgd(before.clone(), p.grad.clone(), _rule_state(opt.state[p]), hyper)
        opt.step()
        assert update.change is not None
        factor, array = update.change
        assert factor == -hyper["lr"]
        torch.testing.assert_close(factor * array, p.detach() - before, rtol=1e-12, atol=1e-15)


def test_sgd_momentum_by_hand() -> None:
    # buffer_1 = g_1; buffer_2 = 0.9 * buffer_1 + (1 - 0.25) * g_2; nesterov: g + 0.9 * buffer
    group = {"lr": 0.5, "momentum": 0.9, "dampening": 0.25}
    first = sgd_rules.sgd(torch.tensor([1.0]), torch.tensor([2.0]), {}, group)
    assert first.state["momentum_buffer"].item() == 2.0
    assert first.param.item() == 0.0  # 1 - 0.5 * 2
    state = {"momentum_buffer": torch.tensor([2.0])}
    second = sgd_rules.sgd(torch.tensor([0.0]), torch.tensor([4.0]), state, group)
    assert second.state["momentum_buffer"].item() == pytest.approx(0.9 * 2 + 0.75 * 4)
    assert second.param.item() == pytest.approx(-0.5 * 4.8)
    nesterov = {"lr": 0.5, "momentum": 0.9, "nesterov": True}
    third = sgd_rules.sgd(torch.tensor([0.0]), torch.tensor([4.0]), state, nesterov)
    assert third.state["momentum_buffer"].item() == pytest.approx(0.9 * 2 + 4)  # dampening 0
    assert third.param.item() == pytest.approx(-0.5 * (4 + 0.9 * 5.8))


def test_sgd_without_momentum_keeps_no_state() -> None:
    update = sgd_rules.sgd(torch.tensor([1.0]), torch.tensor([2.0]), {}, {"lr": 0.5})
    assert update.state == {}


# ---- ASGD and Rprop --------------------------------------------------------------------------


def test_asgd_by_hand() -> None:
    # step t uses eta from the state: p <- p (1 - lambd eta) - eta g; then ax <- p (mu = 1),
    # eta <- lr / (1 + lambd lr t) ** alpha and mu <- 1 / max(1, t - t0)
    group = {"lr": 0.5, "lambd": 0.1, "alpha": 0.5, "t0": 2.0, "weight_decay": 0.2}
    first = sgd_rules.asgd(torch.tensor([1.0]), torch.tensor([2.0]), {}, group)
    d = 2.0 + 0.2 * 1.0
    assert first.param.item() == pytest.approx(1.0 * (1 - 0.1 * 0.5) - 0.5 * d)
    assert first.state["step"] == 1.0
    assert first.state["eta"] == pytest.approx(0.5 / (1 + 0.1 * 0.5 * 1) ** 0.5)
    assert first.state["mu"] == 1.0
    assert first.state["ax"].item() == pytest.approx(first.param.item())
    # step 4 (t - t0 = 2): eta 0.3 and mu 0.5 from the state, the average moves half-way
    state = {"step": 3.0, "eta": 0.3, "mu": 0.5, "ax": torch.tensor([4.0])}
    fourth = sgd_rules.asgd(torch.tensor([1.0]), torch.tensor([-1.0]), state, group)
    new_p = 1.0 * (1 - 0.1 * 0.3) - 0.3 * (-1.0 + 0.2)
    assert fourth.param.item() == pytest.approx(new_p)
    assert fourth.state["ax"].item() == pytest.approx(4.0 + 0.5 * (new_p - 4.0))
    assert fourth.state["eta"] == pytest.approx(0.5 / (1 + 0.1 * 0.5 * 4) ** 0.5)
    assert fourth.state["mu"] == pytest.approx(1 / (4 - 2.0))
    assert fourth.state["step"] == 4.0


def test_asgd_maximize_by_hand() -> None:
    group = {"lr": 0.5, "lambd": 0.0, "maximize": True}
    update = sgd_rules.asgd(torch.tensor([1.0]), torch.tensor([2.0]), {}, group)
    assert update.param.item() == pytest.approx(1.0 + 0.5 * 2.0)


def test_rprop_by_hand() -> None:
    # sizes start at lr; where g * g_prev > 0 they grow by eta_plus, < 0 shrink by eta_minus
    # (and the gradient counts as 0 there), == 0 stay; then clamp to step_sizes
    group = {"lr": 0.1, "etas": (0.5, 2.0), "step_sizes": (0.06, 0.3)}
    param = torch.tensor([1.0, 1.0, 1.0, 1.0])
    grad = torch.tensor([3.0, -3.0, 0.0, 2.0])
    state = {
        "step": 4.0,
        "prev": torch.tensor([1.0, 1.0, 1.0, 0.0]),
        "step_size": torch.tensor([0.1, 0.1, 0.1, 0.2]),
    }
    update = sgd_rules.rprop(param, grad, state, group)
    sizes = [0.2, 0.06, 0.1, 0.2]  # grew; shrank to 0.05, clamped up to 0.06; kept; kept
    np.testing.assert_allclose(update.state["step_size"].numpy(), sizes, rtol=1e-6)
    np.testing.assert_allclose(update.state["prev"].numpy(), [3.0, 0.0, 0.0, 2.0])
    np.testing.assert_allclose(update.param.numpy(), [0.8, 1.0, 1.0, 0.8], rtol=1e-6)
    assert update.state["step"] == 5.0
    large = sgd_rules.rprop(param, grad, state | {"step_size": torch.full((4,), 0.2)}, group)
    assert float(large.state["step_size"].max()) == pytest.approx(0.3)  # 0.4 clamped to 0.3


def test_rprop_first_step_and_maximize_by_hand() -> None:
    update = sgd_rules.rprop(
        torch.tensor([1.0, 1.0]), torch.tensor([2.0, -1.0]), {}, {"lr": 0.1, "maximize": True}
    )
    np.testing.assert_allclose(update.param.numpy(), [1.1, 0.9], rtol=1e-6)
    np.testing.assert_allclose(update.state["step_size"].numpy(), [0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(update.state["prev"].numpy(), [-2.0, 1.0])
    assert update.state["step"] == 1.0


# ---- the Adam family: hand-computed steps and their documented rounding sensitivity ----------
#
# With L2 weight decay d = g + wd * p, torch rounds d by about eps * (|g| + wd |p|) =: eps * M;
# the rules state how far that moves each result (Update.error, see tolerance.py): exp_avg by
# (1 - beta1) M, exp_avg_sq by 2 (1 - beta2) |M d|, the parameter by M / denom * scale, where
# scale bounds d(step)/d(d) times denom.

P, G, WD, LR = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.01, -4.0]), 0.1, 0.1
B1, B2, EPS = 0.8, 0.9, 1e-3


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _arr(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _group(**extra: Any) -> dict[str, Any]:
    return {"lr": LR, "betas": (B1, B2), "eps": EPS, "weight_decay": WD} | extra


def _first_moments() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """d, M, m and v after a first step with L2 decay (the moments start at zero)."""
    d = G + WD * P
    return d, np.abs(G) + WD * np.abs(P), (1 - B1) * d, (1 - B2) * d * d


def test_adam_first_step_with_l2_decay_and_its_sensitivity_by_hand() -> None:
    d, big_m, m, v = _first_moments()
    denom = np.sqrt(v / (1 - B2)) + EPS
    step = LR / (1 - B1) * m / denom
    update = adam_rules.adam(_t(P), _t(G), {}, _group())
    np.testing.assert_allclose(_arr(update.param), P - step, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.state["exp_avg"]), m, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.state["exp_avg_sq"]), v, rtol=1e-12)
    assert update.state["step"] == 1.0
    scale = np.abs(m / denom) * LR / (1 - B1) + LR * (1 - B1) / (1 - B1)
    assert set(update.error) == {"exp_avg", "exp_avg_sq", "param"}
    np.testing.assert_allclose(_arr(update.error["exp_avg"]), (1 - B1) * big_m, rtol=1e-12)
    np.testing.assert_allclose(
        _arr(update.error["exp_avg_sq"]), 2 * (1 - B2) * np.abs(big_m * d), rtol=1e-12
    )
    np.testing.assert_allclose(_arr(update.error["param"]), big_m / denom * scale, rtol=1e-12)


def test_adam_second_step_with_amsgrad_and_maximize_by_hand() -> None:
    m_old, v_old, v_max_old = np.array([0.5, -0.5, 1.0]), np.array([0.2, 0.3, 4.0]), [1, 0.01, 4]
    state = {
        "step": 1.0,
        "exp_avg": _t(m_old),
        "exp_avg_sq": _t(v_old),
        "max_exp_avg_sq": _t(np.array(v_max_old)),
    }
    group = _group(weight_decay=0.0, amsgrad=True, maximize=True)
    g = -G
    m = B1 * m_old + (1 - B1) * g
    v = B2 * v_old + (1 - B2) * g * g
    v_hat = np.maximum(np.array(v_max_old), v)  # the old maximum wins in the first only
    denom = np.sqrt(v_hat / (1 - B2**2)) + EPS
    update = adam_rules.adam(_t(P), _t(G), state, group)
    np.testing.assert_allclose(_arr(update.param), P - LR / (1 - B1**2) * m / denom, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.state["exp_avg_sq"]), v, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.state["max_exp_avg_sq"]), v_hat, rtol=1e-12)
    assert update.state["step"] == 2.0 and update.error == {}


def test_adam_first_step_with_amsgrad_keeps_v_as_its_maximum() -> None:
    update = adam_rules.adam(_t(P), _t(G), {}, _group(weight_decay=0.0, amsgrad=True))
    np.testing.assert_allclose(_arr(update.state["max_exp_avg_sq"]), (1 - B2) * G * G)


@pytest.mark.parametrize("rule", [adam_rules.adamw, adam_rules.adam])
def test_decoupled_decay_by_hand_has_no_extra_sensitivity(rule: Rule) -> None:
    group = _group() | ({"decoupled_weight_decay": True} if rule is adam_rules.adam else {})
    m, v = (1 - B1) * G, (1 - B2) * G * G
    want = P * (1 - LR * WD) - LR / (1 - B1) * m / (np.sqrt(v / (1 - B2)) + EPS)
    update = rule(_t(P), _t(G), {}, group)
    np.testing.assert_allclose(_arr(update.param), want, rtol=1e-12)
    assert update.error == {}


def test_nadam_with_l2_decay_and_its_sensitivity_by_hand() -> None:
    psi = 0.1
    d, big_m, m, v = _first_moments()
    mu = B1 * (1 - 0.5 * 0.96 ** (1 * psi))
    mu_next = B1 * (1 - 0.5 * 0.96 ** (2 * psi))
    denom = np.sqrt(v / (1 - B2)) + EPS
    grad_weight = LR * (1 - mu) / (1 - mu)
    moment_weight = LR * mu_next / (1 - mu * mu_next)
    want = P - grad_weight * d / denom - moment_weight * m / denom
    update = adam_rules.nadam(_t(P), _t(G), {}, _group(momentum_decay=psi))
    np.testing.assert_allclose(_arr(update.param), want, rtol=1e-12)
    assert update.state["mu_product"] == pytest.approx(mu, rel=1e-15)
    assert update.state["step"] == 1.0
    np.testing.assert_allclose(_arr(update.state["exp_avg"]), m, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.state["exp_avg_sq"]), v, rtol=1e-12)
    scale = np.abs(want - P) + grad_weight + moment_weight * (1 - B1)
    np.testing.assert_allclose(_arr(update.error["param"]), big_m / denom * scale, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.error["exp_avg"]), (1 - B1) * big_m, rtol=1e-12)
    decoupled = adam_rules.nadam(_t(P), _t(G), {}, _group(decoupled_weight_decay=True))
    assert decoupled.error == {}


def test_nadam_later_step_by_hand() -> None:
    psi, product = 4e-3, 0.5
    state = {"step": 4.0, "mu_product": product, "exp_avg": _t(G), "exp_avg_sq": _t(G * G)}
    group = _group(weight_decay=0.0)
    mu = B1 * (1 - 0.5 * 0.96 ** (5 * psi))
    mu_next = B1 * (1 - 0.5 * 0.96 ** (6 * psi))
    m = B1 * G + (1 - B1) * G
    v = B2 * G * G + (1 - B2) * G * G
    denom = np.sqrt(v / (1 - B2**5)) + EPS
    want = P - LR * (1 - mu) / (1 - product * mu) * G / denom
    want = want - LR * mu_next / (1 - product * mu * mu_next) * m / denom
    update = adam_rules.nadam(_t(P), _t(G), state, group)
    np.testing.assert_allclose(_arr(update.param), want, rtol=1e-12)
    assert update.state["mu_product"] == pytest.approx(product * mu, rel=1e-15)
    assert update.state["step"] == 5.0


def test_radam_rectified_step_with_l2_decay_and_its_sensitivity_by_hand() -> None:
    beta2 = 0.999
    group = _group(betas=(B1, beta2))
    t = 7.0  # rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t) is about 6.98 > 5: rectified
    m_old, v_old = np.array([0.1, 0.2, -0.3]), np.array([0.5, 0.25, 2.0])
    state = {"step": t - 1, "exp_avg": _t(m_old), "exp_avg_sq": _t(v_old)}
    d = G + WD * P
    big_m = np.abs(G) + WD * np.abs(P)
    m = B1 * m_old + (1 - B1) * d
    v = beta2 * v_old + (1 - beta2) * d * d
    bias1, bias2 = 1 - B1**t, 1 - beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * t * beta2**t / bias2
    assert 6.9 < rho < 7.0
    rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    weight = LR * rect * math.sqrt(bias2) / bias1
    denom = np.sqrt(v) + EPS
    want = P - weight * m / denom
    update = adam_rules.radam(_t(P), _t(G), state, group)
    np.testing.assert_allclose(_arr(update.param), want, rtol=1e-12)
    assert update.state["step"] == t
    scale = np.abs(m / denom) * weight + weight * (1 - B1)
    np.testing.assert_allclose(_arr(update.error["param"]), big_m / denom * scale, rtol=1e-12)
    np.testing.assert_allclose(
        _arr(update.error["exp_avg_sq"]), 2 * (1 - beta2) * np.abs(big_m * d), rtol=1e-12
    )
    decoupled = adam_rules.radam(_t(P), _t(G), state, group | {"decoupled_weight_decay": True})
    assert decoupled.error == {}
    np.testing.assert_allclose(
        _arr(decoupled.param),
        P * (1 - LR * WD)
        - weight
        * (B1 * m_old + (1 - B1) * G)
        / (np.sqrt(beta2 * v_old + (1 - beta2) * G * G) + EPS),
        rtol=1e-12,
    )


def test_radam_unrectified_step_is_momentum_by_hand() -> None:
    update = adam_rules.radam(_t(P), _t(G), {}, _group())
    d = G + WD * P
    np.testing.assert_allclose(_arr(update.param), P - LR * d, rtol=1e-12)  # m_hat = d
    assert update.error == {}


def test_adamax_with_l2_decay_and_its_sensitivity_by_hand() -> None:
    u_old = np.array([0.5, 0.05, 1.0])
    state = {"step": 1.0, "exp_avg": _t(np.zeros(3)), "exp_inf": _t(u_old)}
    d = G + WD * P
    big_m = np.abs(G) + WD * np.abs(P)
    m = (1 - B1) * d
    u = np.maximum(B2 * u_old, np.abs(d) + EPS)
    weight = LR / (1 - B1**2)
    update = adam_rules.adamax(_t(P), _t(G), state, _group())
    np.testing.assert_allclose(_arr(update.param), P - weight * m / u, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.state["exp_inf"]), u, rtol=1e-12)
    assert update.state["step"] == 2.0
    scale = np.abs(m / u) * weight + weight * (1 - B1)
    assert set(update.error) == {"exp_avg", "exp_inf", "param"}
    np.testing.assert_allclose(_arr(update.error["param"]), big_m / u * scale, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.error["exp_avg"]), (1 - B1) * big_m, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.error["exp_inf"]), big_m, rtol=1e-12)
    plain = adam_rules.adamax(_t(P), _t(G), state, _group(weight_decay=0.0, maximize=True))
    assert plain.error == {}
    np.testing.assert_allclose(
        _arr(plain.state["exp_inf"]), np.maximum(B2 * u_old, np.abs(G) + EPS), rtol=1e-12
    )


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
def test_sparse_adam_by_hand() -> None:
    # only the rows the sparse gradient holds move, by lr sqrt(bc2) / bc1 m / (sqrt v + eps)
    param = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    grad = torch.sparse_coo_tensor([[0, 2]], [2.0, -1.0], (3,), dtype=torch.float64)
    state = {"step": 1.0, "exp_avg": _t(np.array([1.0, 1.0, 1.0]))}
    state["exp_avg_sq"] = _t(np.array([4.0, 4.0, 4.0]))
    group = {"lr": LR, "betas": (B1, B2), "eps": EPS, "maximize": True}
    g = np.array([-2.0, 0.0, 1.0])
    m = np.where([True, False, True], B1 * 1.0 + (1 - B1) * g, 1.0)
    v = np.where([True, False, True], B2 * 4.0 + (1 - B2) * g * g, 4.0)
    weight = LR * math.sqrt(1 - B2**2) / (1 - B1**2)
    want = np.where([True, False, True], [1.0, 2.0, 3.0] - weight * m / (np.sqrt(v) + EPS), 2.0)
    update = adam_rules.sparse_adam(param, grad, state, group)
    np.testing.assert_allclose(_arr(update.param), want, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.state["exp_avg"]), m, rtol=1e-12)
    np.testing.assert_allclose(_arr(update.state["exp_avg_sq"]), v, rtol=1e-12)
    assert update.state["step"] == 2.0
    first = adam_rules.sparse_adam(param, grad, {}, {"lr": LR})
    np.testing.assert_allclose(_arr(first.state["exp_avg"]), [0.2, 0.0, -0.1], rtol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_radam_at_rho_exactly_5_is_not_rectified_as_in_torch(foreach: bool) -> None:
    # with this beta2, rho_6 = rho_inf - 12 beta2^6 / (1 - beta2^6) is 5.0 exactly in floats:
    # torch rectifies only where rho_t > 5
    beta2 = 0.8397685748659791
    rho_inf = 2 / (1 - beta2) - 1
    assert rho_inf - 2 * 6 * beta2**6 / (1 - beta2**6) == 5.0
    p = torch.nn.Parameter(torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64))
    group = {"lr": 0.1, "betas": (0.9, beta2)}
    opt = optim.RAdam([p], foreach=foreach, **group)  # type: ignore[arg-type]
    for step in range(6):
        p.grad = _grads(step)[:3]
        before = p.detach().clone()
        state = _rule_state(opt.state[p])
        update = adam_rules.radam(before.clone(), p.grad.clone(), state, group)
        opt.step()
        _close(p.detach(), update.param, ("RAdam", step))
    m = opt.state[p]["exp_avg"]
    torch.testing.assert_close(p.detach(), before - 0.1 / (1 - 0.9**6) * m)  # plain momentum


def test_asgd_default_t0_starts_averaging_after_a_million_steps() -> None:
    # torch's default t0 = 1e6: mu = 1 / max(1, t - t0) with t = 1e6 + 2 is 1/2
    state = {"step": 1e6 + 1, "eta": 0.5, "mu": 1.0, "ax": torch.tensor([1.0])}
    update = sgd_rules.asgd(torch.tensor([1.0]), torch.tensor([0.0]), state, {"lr": 0.5})
    assert update.state["mu"] == 0.5
    assert update.state["step"] == 1e6 + 2


def test_asgd_average_is_a_plain_copy_while_mu_is_1() -> None:
    # ax + 1 * (p - ax) is not p in float32 when ax is large (1e8 + (1 - 1e8) rounds to 0):
    # torch copies the parameter while mu is 1, and so must the rule
    state = {"step": 1.0, "eta": 0.5, "mu": 1.0, "ax": torch.tensor([1e8])}
    group = {"lr": 0.5, "lambd": 0.0}
    update = sgd_rules.asgd(torch.tensor([1.0]), torch.tensor([0.0]), state, group)
    assert update.param.item() == 1.0
    assert update.state["ax"].item() == 1.0


def test_rprop_default_step_sizes_clamp_at_1e_6_and_50() -> None:
    group = {"lr": 1.0}  # torch's defaults: etas (0.5, 1.2), step_sizes (1e-6, 50)
    state = {
        "step": 3.0,
        "prev": torch.tensor([1.0, -1.0]),
        "step_size": torch.tensor([45.0, 1.5e-6]),
    }
    update = sgd_rules.rprop(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), state, group)
    sizes = update.state["step_size"].tolist()
    assert sizes[0] == 50.0  # 45 * 1.2 = 54, clamped
    assert sizes[1] == pytest.approx(1e-6, rel=1e-6)  # 1.5e-6 * 0.5 = 7.5e-7, clamped
    assert update.param.tolist() == [-50.0, 0.0]  # the flipped element does not move


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
def test_sparse_adam_first_step_leaves_untouched_rows_at_zero() -> None:
    param = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    grad = torch.sparse_coo_tensor([[0, 2]], [2.0, -1.0], (3,), dtype=torch.float64)
    first = adam_rules.sparse_adam(param, grad, {}, {"lr": LR})  # betas 0.9, 0.999; eps 1e-8
    np.testing.assert_allclose(_arr(first.state["exp_avg"]), [0.2, 0.0, -0.1], rtol=1e-12)
    np.testing.assert_allclose(_arr(first.state["exp_avg_sq"]), [4e-3, 0.0, 1e-3], rtol=1e-12)
    weight = LR * math.sqrt(1 - 0.999) / (1 - 0.9)
    want = [1.0 - weight * 0.2 / (math.sqrt(4e-3) + 1e-8), 2.0]
    want.append(3.0 + weight * 0.1 / (math.sqrt(1e-3) + 1e-8))
    np.testing.assert_allclose(_arr(first.param), want, rtol=1e-12)
    assert first.state["step"] == 1.0


def test_sparse_adam_on_a_dense_gradient_moves_every_row() -> None:
    param = torch.tensor([1.0, 2.0], dtype=torch.float64)
    update = adam_rules.sparse_adam(param, _t(np.array([2.0, -1.0])), {}, {"lr": LR})
    weight = LR * math.sqrt(1 - 0.999) / (1 - 0.9)
    want = [1.0 - weight * 0.2 / (math.sqrt(4e-3) + 1e-8)]
    want.append(2.0 + weight * 0.1 / (math.sqrt(1e-3) + 1e-8))
    np.testing.assert_allclose(_arr(update.param), want, rtol=1e-12)


# a later step for each rule: step 11, where RAdam takes its adaptive (rectified) step (with
# the default beta2 0.999, rho_t = 1999 - 22 beta2^11 / (1 - beta2^11) is about 10 > 5)
_MOMENTS = {"step": 10.0, "exp_avg": _t(G), "exp_avg_sq": _t(G * G)}
_L2_RULES: dict[str, tuple[Rule, dict[str, Any], set[str]]] = {
    "Adam": (adam_rules.adam, _MOMENTS, {"exp_avg", "exp_avg_sq", "param"}),
    "NAdam": (adam_rules.nadam, _MOMENTS | {"mu_product": 0.5}, {"exp_avg", "exp_avg_sq", "param"}),
    "RAdam": (adam_rules.radam, _MOMENTS, {"exp_avg", "exp_avg_sq", "param"}),
    "Adamax": (
        adam_rules.adamax,
        {"step": 10.0, "exp_inf": _t(np.abs(G))},
        {"exp_avg", "exp_inf", "param"},
    ),
}


@pytest.mark.parametrize("name", list(_L2_RULES))
@pytest.mark.parametrize("decay", [{}, {"weight_decay": 0.0}])
def test_no_weight_decay_means_no_l2_sensitivity(name: str, decay: dict[str, float]) -> None:
    # without decay d is the gradient itself: nothing cancels, so nothing is added
    rule, state, _ = _L2_RULES[name]
    assert rule(_t(P), _t(G), state, {"lr": LR} | decay).error == {}


@pytest.mark.parametrize("name", list(_L2_RULES))
def test_a_weight_decay_of_1_has_the_l2_sensitivity(name: str) -> None:
    rule, state, keys = _L2_RULES[name]
    update = rule(_t(P), _t(G), state, {"lr": LR, "weight_decay": 1.0})
    assert set(update.error) == keys
    # |g| + wd |p| enters every entry: exp_avg's is (1 - beta1) times it (beta1 0.9 by default)
    np.testing.assert_allclose(_arr(update.error["exp_avg"]), 0.1 * (np.abs(G) + np.abs(P)))
