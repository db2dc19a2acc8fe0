"""RMSprop, Adagrad and Adadelta (rules/adaptive.py) by hand: steps and rounding sensitivities.

Each expectation is the update rule of torch.optim's docstring, or the rounding sensitivity the
rule documents (tolerance.py: with L2 decay ``d = g + wd * p`` torch rounds ``d`` by about
``eps * M``, ``M = |g| + wd |p|``), evaluated here in numpy; never another gradscope function.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import optim

from gradscope._optim.rules import adaptive

P, G, WD, LR = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.01, -4.0]), 0.1, 0.1
M = np.abs(G) + WD * np.abs(P)  # the scale of torch's rounding in d = g + wd * p
D = G + WD * P
EPS64 = 2.0**-52


def _t(x: Any) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _np(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _same(got: Any, want: Any) -> None:
    np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=0)


# ---- RMSprop ---------------------------------------------------------------------------------


def test_rmsprop_first_step_with_momentum_and_l2_decay_by_hand() -> None:
    # v = (1 - alpha) d^2; buffer = d / (sqrt(v) + eps); p <- p - lr * buffer. Sensitivities:
    # v moves by 2 (1 - alpha) |M d|, d / denom by M / denom * (|d / denom| + 1) (the buffer),
    # the parameter by lr times that
    alpha, eps, momentum = 0.9, 1e-3, 0.5
    group = {"lr": LR, "alpha": alpha, "eps": eps, "momentum": momentum, "weight_decay": WD}
    update = adaptive.rmsprop(_t(P), _t(G), {}, group)
    v = (1 - alpha) * D * D
    denom = np.sqrt(v) + eps
    _same(update.state["square_avg"], v)
    _same(update.state["momentum_buffer"], D / denom)
    _same(update.param, P - LR * D / denom)
    assert update.state["step"] == 1.0
    move = M / denom * (np.abs(D / denom) + 1)
    assert set(update.error) == {"square_avg", "momentum_buffer", "param"}
    _same(update.error["square_avg"], 2 * (1 - alpha) * np.abs(M * D))
    _same(update.error["momentum_buffer"], move)
    _same(update.error["param"], LR * move)


def test_rmsprop_later_step_with_momentum_by_hand() -> None:
    # buffer = momentum * buffer_old + d / denom; no decay: no sensitivity
    alpha, eps, momentum = 0.5, 1e-3, 0.5
    state = {"step": 3.0, "square_avg": _t([1.0, 0.5, 2.0]), "momentum_buffer": _t([1, -1, 2])}
    group = {"lr": LR, "alpha": alpha, "eps": eps, "momentum": momentum}
    update = adaptive.rmsprop(_t(P), _t(G), state, group)
    v = alpha * np.array([1.0, 0.5, 2.0]) + (1 - alpha) * G * G
    buffer = momentum * np.array([1.0, -1.0, 2.0]) + G / (np.sqrt(v) + eps)
    _same(update.state["momentum_buffer"], buffer)
    _same(update.param, P - LR * buffer)
    assert update.state["step"] == 4.0
    assert update.error == {}


def test_rmsprop_centered_later_step_with_l2_decay_by_hand() -> None:
    # mean = alpha mean_old + (1 - alpha) d; root = sqrt(v - mean^2); the centred variance
    # cancels: rounding of eps * v moves the root by eps * v / root (never more than
    # sqrt(eps * v / 2)), so d / denom moves by |d / denom| / denom * v / max(root, that floor)
    alpha, eps = 0.9, 1e-3
    old_v, old_mean = np.array([0.5, 0.2, 1.0]), np.array([0.1, -0.2, 0.3])
    state = {"step": 2.0, "square_avg": _t(old_v), "grad_avg": _t(old_mean)}
    group = {"lr": LR, "alpha": alpha, "eps": eps, "centered": True, "weight_decay": WD}
    update = adaptive.rmsprop(_t(P), _t(G), state, group)
    v = alpha * old_v + (1 - alpha) * D * D
    mean = alpha * old_mean + (1 - alpha) * D
    root = np.sqrt(v - mean * mean)
    denom = root + eps
    _same(update.state["square_avg"], v)
    _same(update.state["grad_avg"], mean)
    _same(update.param, P - LR * D / denom)
    assert "momentum_buffer" not in update.state
    floor = np.sqrt(v * EPS64 / 2)
    assert (root > floor).all()
    centred = np.abs(D / denom) / denom * v / root
    decay = M / denom * (np.abs(D / denom) + 1)
    assert set(update.error) == {"square_avg", "grad_avg", "param"}
    _same(update.error["square_avg"], 2 * (1 - alpha) * np.abs(M * D))
    _same(update.error["grad_avg"], (1 - alpha) * M)
    _same(update.error["param"], LR * (centred + decay))


def test_rmsprop_centered_where_the_variance_cancels_to_zero_by_hand() -> None:
    # a constant gradient: v = mean^2 exactly (alpha 1/2, powers of 2), root 0; the root's
    # move is bounded by sqrt(eps * v / 2); where v is 0 too nothing moves (0 / 0 counts as 0)
    alpha, eps, momentum = 0.5, 1e-3, 0.5
    state = {"step": 5.0, "square_avg": _t([4.0, 0.0]), "grad_avg": _t([2.0, 0.0])}
    state["momentum_buffer"] = _t([0.0, 0.0])
    group = {"lr": LR, "alpha": alpha, "eps": eps, "centered": True, "momentum": momentum}
    update = adaptive.rmsprop(_t([1.0, 1.0]), _t([2.0, 0.0]), state, group)
    _same(update.state["square_avg"], [4.0, 0.0])
    _same(update.state["grad_avg"], [2.0, 0.0])
    _same(update.state["momentum_buffer"], [2.0 / eps, 0.0])
    _same(update.param, [1.0 - LR * 2.0 / eps, 1.0])
    shift = 4.0 / np.sqrt(4.0 * EPS64 / 2)
    move = np.array([2.0 / eps / eps * shift, 0.0])
    assert set(update.error) == {"momentum_buffer", "param"}
    _same(update.error["momentum_buffer"], move)
    _same(update.error["param"], LR * move)


# ---- Adagrad ---------------------------------------------------------------------------------


def test_adagrad_later_step_with_lr_decay_and_l2_decay_by_hand() -> None:
    # clr = lr / (1 + (t - 1) lr_decay); sum += d^2; p <- p - clr d / (sqrt(sum) + eps).
    # Sensitivities: sum by 2 |M d|, the parameter by clr M / denom (|d / denom| + 1)
    eps, lr_decay = 1e-3, 0.5
    old = np.array([1.0, 0.5, 2.0])
    state = {"step": 2.0, "sum": _t(old)}
    group = {"lr": LR, "lr_decay": lr_decay, "eps": eps, "weight_decay": WD}
    update = adaptive.adagrad(_t(P), _t(G), state, group)
    clr = LR / (1 + 2 * lr_decay)
    total = old + D * D
    denom = np.sqrt(total) + eps
    _same(update.state["sum"], total)
    _same(update.param, P - clr * D / denom)
    assert update.state["step"] == 3.0
    assert set(update.error) == {"sum", "param"}
    _same(update.error["sum"], 2 * np.abs(M * D))
    _same(update.error["param"], clr * M / denom * (np.abs(D / denom) + 1))


def test_adagrad_first_step_starts_from_the_initial_accumulator_value_by_hand() -> None:
    group = {"lr": LR, "initial_accumulator_value": 0.25, "eps": 0.0}
    update = adaptive.adagrad(_t(P), _t(G), {}, group)
    _same(update.state["sum"], 0.25 + G * G)
    _same(update.param, P - LR * G / np.sqrt(0.25 + G * G))
    assert update.error == {}


def test_adagrad_first_step_without_an_initial_accumulator_value_starts_from_0() -> None:
    # torch's default initial_accumulator_value is 0: sum = g^2, the step lr * g / |g|
    # (torch fills the sum when the optimizer is made, so only a rule called alone reads this)
    update = adaptive.adagrad(_t(P), _t(G), {}, {"lr": LR, "eps": 0.0})
    _same(update.state["sum"], G * G)
    _same(update.param, P - LR * np.sign(G))


def test_adagrad_initial_accumulator_value_as_in_torch() -> None:
    p = torch.nn.Parameter(_t(P))
    opt = optim.Adagrad([p], lr=LR, initial_accumulator_value=0.25)
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    p.grad = _t(G)
    update = adaptive.adagrad(p.detach().clone(), p.grad.clone(), {}, group)
    opt.step()
    torch.testing.assert_close(update.param, p.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(update.state["sum"], opt.state[p]["sum"], rtol=1e-12, atol=0)


# ---- Adadelta --------------------------------------------------------------------------------


def test_adadelta_later_step_with_l2_decay_by_hand() -> None:
    # v = rho v + (1 - rho) d^2; delta = sqrt(u + eps) / sqrt(v + eps) d; u = rho u + (1 - rho)
    # delta^2; p <- p - lr delta. Sensitivities: v by 2 (1 - rho) |M d|; the step is linear in
    # d up to the ratio, which moves by at most its own size: delta by 2 M ratio; u by
    # 2 (1 - rho) |delta| that; the parameter by lr times it
    rho, eps, lr = 0.9, 1e-6, 0.5
    old_v, old_u = np.array([0.5, 0.2, 1.0]), np.array([0.01, 0.02, 0.03])
    state = {"step": 4.0, "square_avg": _t(old_v), "acc_delta": _t(old_u)}
    group = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": WD}
    update = adaptive.adadelta(_t(P), _t(G), state, group)
    v = rho * old_v + (1 - rho) * D * D
    ratio = np.sqrt(old_u + eps) / np.sqrt(v + eps)
    delta = ratio * D
    u = rho * old_u + (1 - rho) * delta * delta
    _same(update.state["square_avg"], v)
    _same(update.state["acc_delta"], u)
    _same(update.param, P - lr * delta)
    assert update.state["step"] == 5.0
    moved = 2 * M * ratio
    assert set(update.error) == {"square_avg", "acc_delta", "param"}
    _same(update.error["square_avg"], 2 * (1 - rho) * np.abs(M * D))
    _same(update.error["acc_delta"], 2 * (1 - rho) * np.abs(delta * moved))
    _same(update.error["param"], lr * moved)


@pytest.mark.parametrize("rule", [adaptive.rmsprop, adaptive.adagrad, adaptive.adadelta])
def test_without_weight_decay_there_is_no_extra_sensitivity(rule: Any) -> None:
    update = rule(_t(P), _t(G), {}, {"lr": LR, "weight_decay": 0.0})
    assert update.error == {}


def test_adadelta_without_lr_uses_torchs_default_of_1() -> None:
    # first step: v = (1 - rho) d^2, delta = sqrt(eps) / sqrt(v + eps) * d, p <- p - 1.0 * delta
    rho, eps = 0.9, 1e-6
    update = adaptive.adadelta(_t(P), _t(G), {}, {"rho": rho, "eps": eps})
    delta = np.sqrt(eps) / np.sqrt((1 - rho) * G * G + eps) * G
    _same(update.param, P - delta)
