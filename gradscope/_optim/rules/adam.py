"""Reference rules for the Adam family, each from its torch.optim docstring's pseudo-code.

Adam, AdamW, NAdam, RAdam and Adamax share the moments ``m`` (``exp_avg``) and ``v``
(``exp_avg_sq``, ``exp_inf`` for Adamax); they differ in how the step is formed from them.
SparseAdam has no pseudo-code: it is Adam restricted to the rows the sparse gradient touches,
with ``eps`` added to ``sqrt(v)`` before the bias correction (as its implementation does).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..arrays import A, zeros_like
from .base import Update, array, flag, num, pair, scalar, steps_taken

__all__ = ["adam", "adamax", "adamw", "nadam", "radam", "sparse_adam"]


def _decay(param: A, g: A, group: dict[str, Any], lr: float, decoupled: bool) -> tuple[A, A]:
    """Weight decay: shrink the parameter (decoupled, AdamW) or add L2 to the gradient."""
    weight_decay = num(group.get("weight_decay", 0))
    if weight_decay == 0:
        return param, g
    if decoupled:
        return param.mul(1 - lr * weight_decay), g
    return param, g.add(param, alpha=weight_decay)


def _moments(g: A, state: dict[str, Any], beta1: float, beta2: float) -> tuple[A, A]:
    """m = beta1 m + (1 - beta1) g and v = beta2 v + (1 - beta2) g^2, from zero at first."""
    m_old: A | None = array(state, "exp_avg")
    v_old: A | None = array(state, "exp_avg_sq")
    m = (zeros_like(g) if m_old is None else m_old).lerp(g, 1 - beta1)
    v = (zeros_like(g) if v_old is None else v_old).mul(beta2).addcmul_(g, g, value=1 - beta2)
    return m, v


def l2_errors(
    grad: A, param: A, group: dict[str, Any], d: A, denom: A, scale: A, beta1: float, beta2: float
) -> dict[str, A | float]:
    """Rounding in ``d = g + wd * p`` (it may cancel to near ``eps``) carried into the step.

    torch rounds ``d`` to about ``eps * (|g| + wd |p|)``; the first moment moves by
    ``(1 - beta1)`` times that, the second by ``2 (1 - beta2) |d|`` times it, and a step
    ``m / denom`` by at most ``scale / denom`` times it, with ``scale`` the rule's
    ``d(step)/d(d)`` bound times ``denom`` (derived in the docs of ``tolerance.py``).
    """
    magnitude = grad.abs().add_(param.abs(), alpha=num(group["weight_decay"]))  # L2 decay is on
    return {
        "exp_avg": magnitude * (1 - beta1),
        "exp_avg_sq": (magnitude * d).abs_().mul_(2 * (1 - beta2)),
        "param": magnitude.div_(denom).mul_(scale),
    }


def adam(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.Adam: bias-corrected moments, amsgrad, L2 or decoupled weight decay, maximize.

    >>> adam(torch.tensor([1.0]), torch.tensor([3.0]), {}, {"lr": 0.1}).param  # lr * sign
    tensor([0.9000])
    """
    return _adam(param, grad, state, group, flag(group, "decoupled_weight_decay"))


def adamw(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.AdamW: Adam with the weight decay applied to the parameter, not the gradient.

    >>> adamw(torch.tensor([1.0]), torch.tensor([3.0]), {}, {"lr": 0.1, "weight_decay": 0.5}).param
    tensor([0.8500])
    """
    if "weight_decay" not in group:  # torch.optim.AdamW's default, not Adam's 0
        group = {**group, "weight_decay": 1e-2}
    return _adam(param, grad, state, group, True)


def _adam(
    param: A, grad: A, state: dict[str, Any], group: dict[str, Any], decoupled: bool
) -> Update[A]:
    lr = num(group["lr"])
    beta1, beta2 = pair(group, "betas", (0.9, 0.999))
    eps = num(group.get("eps", 1e-8))
    t = steps_taken(state) + 1
    g = -grad if flag(group, "maximize") else grad
    decayed, g = _decay(param, g, group, lr, decoupled)
    m, v = _moments(g, state, beta1, beta2)
    new_state: dict[str, A | float] = {"step": t, "exp_avg": m, "exp_avg_sq": v}
    if flag(group, "amsgrad"):
        v_max_old: A | None = array(state, "max_exp_avg_sq")
        v = v if v_max_old is None else v_max_old.maximum(v)
        new_state["max_exp_avg_sq"] = v
    bias1, bias2 = 1 - beta1**t, 1 - beta2**t
    denom = (v / bias2).sqrt_().add_(eps)
    new_param = decayed.addcdiv(m, denom, value=-lr / bias1)
    error: dict[str, A | float] = {}
    if num(group.get("weight_decay", 0)) != 0 and not decoupled:
        scale = (m / denom).abs_().mul_(lr / bias1).add_(lr * (1 - beta1) / bias1)
        error = l2_errors(grad, param, group, g, denom, scale, beta1, beta2)
    return Update(new_param, new_state, error)


def nadam(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.NAdam: Nesterov momentum in Adam, with momentum decay ``psi``.

    ``mu_t = beta1 (1 - 0.96 ** (t psi) / 2)``; the state keeps ``mu_product``, the product of
    every ``mu_i`` so far, and the step mixes the gradient and the first moment:
    ``lr (1 - mu_t) / (1 - prod_t) g + lr mu_{t+1} / (1 - prod_{t+1}) m``, over
    ``sqrt(v / (1 - beta2 ** t)) + eps``.

    >>> nadam(torch.tensor([1.0]), torch.tensor([3.0]), {}, {"lr": 0.1}).param
    tensor([0.8944])
    """
    lr = num(group["lr"])
    beta1, beta2 = pair(group, "betas", (0.9, 0.999))
    eps, psi = num(group.get("eps", 1e-8)), num(group.get("momentum_decay", 4e-3))
    t = steps_taken(state) + 1
    g = -grad if flag(group, "maximize") else grad
    decoupled = flag(group, "decoupled_weight_decay")
    decayed, g = _decay(param, g, group, lr, decoupled)
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    product = scalar(state, "mu_product", 1.0) * mu
    m, v = _moments(g, state, beta1, beta2)
    denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
    grad_weight = lr * (1 - mu) / (1 - product)
    moment_weight = lr * mu_next / (1 - product * mu_next)
    new_param = decayed.addcdiv(g, denom, value=-grad_weight).addcdiv_(
        m, denom, value=-moment_weight
    )
    new_state: dict[str, A | float] = {"step": t, "mu_product": product, "exp_avg": m}
    new_state["exp_avg_sq"] = v
    error: dict[str, A | float] = {}
    if num(group.get("weight_decay", 0)) != 0 and not decoupled:
        scale = (new_param - decayed).abs_().add_(grad_weight + moment_weight * (1 - beta1))
        error = l2_errors(grad, param, group, g, denom, scale, beta1, beta2)
    return Update(new_param, new_state, error)


def radam(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.RAdam: Adam whose adaptive step is switched on, rectified, once rho_t > 5.

    ``rho_inf = 2 / (1 - beta2) - 1`` and ``rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)``;
    above 5 the step is ``lr m_hat r_t sqrt(1 - beta2^t) / (sqrt(v) + eps)``, below it plain
    momentum ``lr m_hat``.

    >>> radam(torch.tensor([1.0]), torch.tensor([3.0]), {}, {"lr": 0.1}).param  # m_hat = g
    tensor([0.7000])
    """
    lr = num(group["lr"])
    beta1, beta2 = pair(group, "betas", (0.9, 0.999))
    eps = num(group.get("eps", 1e-8))
    t = steps_taken(state) + 1
    g = -grad if flag(group, "maximize") else grad
    decoupled = flag(group, "decoupled_weight_decay")
    decayed, g = _decay(param, g, group, lr, decoupled)
    m, v = _moments(g, state, beta1, beta2)
    bias1, bias2 = 1 - beta1**t, 1 - beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * t * beta2**t / bias2
    new_state: dict[str, A | float] = {"step": t, "exp_avg": m, "exp_avg_sq": v}
    if rho <= 5:  # not rectified yet: a plain momentum step, no amplified rounding
        return Update(decayed.add(m, alpha=-lr / bias1), new_state)
    rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    denom = v.sqrt().add_(eps)
    weight = lr * rect * math.sqrt(bias2) / bias1
    new_param = decayed.addcdiv(m, denom, value=-weight)
    error: dict[str, A | float] = {}
    if num(group.get("weight_decay", 0)) != 0 and not decoupled:
        scale = (m / denom).abs_().mul_(weight).add_(weight * (1 - beta1))
        error = l2_errors(grad, param, group, g, denom, scale, beta1, beta2)
    return Update(new_param, new_state, error)


def adamax(param: A, grad: A, state: dict[str, Any], group: dict[str, Any]) -> Update[A]:
    """torch.optim.Adamax: Adam with the infinity norm ``u = max(beta2 u, |g| + eps)``.

    >>> adamax(torch.tensor([1.0]), torch.tensor([3.0]), {}, {"lr": 0.1}).param
    tensor([0.9000])
    """
    lr = num(group["lr"])
    beta1, beta2 = pair(group, "betas", (0.9, 0.999))
    eps = num(group.get("eps", 1e-8))
    t = steps_taken(state) + 1
    g = -grad if flag(group, "maximize") else grad
    weight_decay = num(group.get("weight_decay", 0))  # always L2: torch has no decoupled Adamax
    if weight_decay != 0:
        g = g.add(param, alpha=weight_decay)
    m_old: A | None = array(state, "exp_avg")
    u_old: A | None = array(state, "exp_inf")
    m = (zeros_like(g) if m_old is None else m_old).lerp(g, 1 - beta1)
    u = (zeros_like(g) if u_old is None else u_old).mul(beta2).maximum(g.abs().add_(eps))
    weight = lr / (1 - beta1**t)
    new_param = param.addcdiv(m, u, value=-weight)
    error: dict[str, A | float] = {}
    if weight_decay != 0:
        scale = (m / u).abs_().mul_(weight).add_(weight * (1 - beta1))
        error = l2_errors(grad, param, group, g, u, scale, beta1, beta2)
        del error["exp_avg_sq"]  # u = max(beta2 u, |d| + eps) moves by at most |d|'s error
        error["exp_inf"] = error["exp_avg"] * (1 / (1 - beta1))
    return Update(new_param, {"step": t, "exp_avg": m, "exp_inf": u}, error)


def sparse_adam(
    param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]
) -> Update[Tensor]:
    """torch.optim.SparseAdam: Adam on the entries a sparse gradient holds, the rest untouched.

    The moments and the parameter change only where the (coalesced) gradient has an entry;
    the step is ``lr sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)``.

    >>> g = torch.tensor([0.0, 3.0]).to_sparse()
    >>> sparse_adam(torch.tensor([1.0, 1.0]), g, {}, {"lr": 0.1}).param
    tensor([1.0000, 0.9000])
    """
    lr = num(group["lr"])
    beta1, beta2 = pair(group, "betas", (0.9, 0.999))
    eps = num(group.get("eps", 1e-8))
    t = steps_taken(state) + 1
    if grad.is_sparse:
        grad = grad.coalesce()
        touched = torch.zeros_like(param, dtype=torch.bool)
        touched[tuple(grad.indices())] = True
        dense = grad.to_dense()
    else:
        touched, dense = torch.ones_like(param, dtype=torch.bool), grad
    g = -dense if flag(group, "maximize") else dense
    m, v = _moments(g, state, beta1, beta2)
    m_old: Tensor | None = array(state, "exp_avg")
    v_old: Tensor | None = array(state, "exp_avg_sq")
    m = m.where(touched, 0.0 if m_old is None else m_old)
    v = v.where(touched, 0.0 if v_old is None else v_old)
    weight = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    moved = param.addcdiv(m, v.sqrt().add_(eps), value=-weight)
    return Update(moved.where(touched, param), {"step": t, "exp_avg": m, "exp_avg_sq": v})
