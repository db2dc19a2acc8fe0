"""Guesses at the mistake behind a failing step, from how the actual update relates to the
expected one (a multiple of it, its opposite, nothing) and, for a state entry, from the rule.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .rules import adam as adam_rules
from .rules import sgd as sgd_rules
from .rules.base import num

__all__ = ["explain_state", "explain_update", "guess", "state_hint"]


def guess(
    actual: Tensor, expected: Tensor, lr: float | None, group: int, maximize: bool = False
) -> str:
    """What the user probably got wrong, given the actual and expected updates (after - before).

    >>> import torch
    >>> guess(torch.tensor([2.0, -4.0]), torch.tensor([1.0, -2.0]), 0.1, 0)
    'it moved twice as far as the reference: was the step applied twice?'
    """
    a, e = actual.flatten().double(), expected.flatten().double()
    if not bool(a.isfinite().all()):
        return "it became NaN/Inf in this step (a non-finite gradient? lr far too large?)"
    ee = float(e.dot(e))
    if ee == 0:
        return f"it moved by up to {float(a.abs().max()):.3g} where the reference does not move it"
    ratio = float(a.dot(e)) / ee
    off_line = float((a - ratio * e).norm()) / ee**0.5
    if off_line > 0.05:
        return (
            "its update is not a multiple of the reference update: check the update rule "
            "(momentum, weight decay, the state it starts from)"
        )
    if abs(ratio) < 0.05:
        return "it did not move although the reference moves it: did the step skip it?"
    if abs(ratio + 1) < 0.05 and maximize:
        return (
            f"it moved the opposite way to the reference, which maximizes (maximize=True in "
            f"param group {group}): was maximize ignored?"
        )
    if abs(ratio + 1) < 0.05:
        return (
            "it moved the opposite way to the reference: a sign flip (`p += lr * grad` "
            "instead of `p -= lr * grad`, or maximize=True by mistake?)"
        )
    if abs(ratio - 2) < 0.05:
        return "it moved twice as far as the reference: was the step applied twice?"
    if abs(ratio - 1) < 0.01:
        return (
            f"it is close to the reference update but off by more than rounding (a relative "
            f"{off_line:.2g} off the update's direction): a small difference in the rule, such "
            f"as eps inside instead of outside the square root, or a bias correction term?"
        )
    like = f" (as if lr were {ratio * lr:.3g} instead of {lr:g})" if lr else ""
    return (
        f"it moved {ratio:.3g} times as far as the reference{like}: does the step use the lr "
        f"of param group {group}, and every factor of the rule (a bias correction?)"
    )


_HINTS = {
    "step": "the step count must go up by one at every step",
    "exp_avg": "beta1 m + (1 - beta1) g, with g after maximize and L2 weight decay",
    "exp_avg_sq": "beta2 v + (1 - beta2) g^2",
    "momentum_buffer": "momentum * buf + (1 - dampening) * g, starting as g",
}


def state_hint(entry: str) -> str:
    """The rule's formula for a state entry, for a failure message ('' if none is known)."""
    formula = _HINTS.get(entry, "")
    return f"the rule keeps {formula}" if formula else ""


def _fit(diff: Tensor, basis: Tensor) -> float | None:
    """``k`` with ``diff ~= k * basis`` (within 1% of |diff|), or None."""
    d, b = diff.flatten().double(), basis.flatten().double()
    bb = float(b.dot(b))
    dd = float(d.dot(d))
    if bb == 0 or dd == 0:
        return None
    k = float(d.dot(b)) / bb
    if float((d - k * b).norm()) > 0.01 * dd**0.5:
        return None
    return k


def _close(k: float, want: float) -> bool:
    return want != 0 and abs(k - want) <= 0.02 * abs(want)


def explain_state(
    rule: Any, entry: str, hyper: dict[str, Any], diff: Tensor, grad: Tensor | None, param: Tensor
) -> str:
    """Name the mistake when the optimizer's state entry is off by a multiple of grad or param.

    ``diff`` is (optimizer's value - rule's value). The Adam family's ``exp_avg`` and SGD's
    ``momentum_buffer`` take the gradient with weight ``1 - beta1`` (``1 - dampening``): off
    by twice that times the gradient, the gradient went in with the wrong sign; off by that
    times ``weight_decay * param``, weight decay went in where it should not (or not where it
    should).
    """
    if rule in (adam_rules.adam, adam_rules.adamw, adam_rules.nadam, adam_rules.radam):
        if entry != "exp_avg":
            return ""
        weight = 1 - num(pair_of(hyper, "betas", (0.9, 0.999))[0])
    elif rule is sgd_rules.sgd and entry == "momentum_buffer":
        weight = 1 - num(hyper.get("dampening", 0))
    else:
        return ""
    if grad is not None:
        k = _fit(diff, grad)
        if k is not None and (_close(abs(k), 2 * weight) or _close(abs(k), 2.0)):
            return (
                "it is off by twice the gradient's share: the gradient entered with the wrong "
                "sign (maximize ignored, or applied twice?)"
            )
    decay = num(hyper.get("weight_decay", 0))
    k = _fit(diff, param)
    if k is not None and decay and (_close(abs(k), weight * decay) or _close(abs(k), decay)):
        decoupled = rule is adam_rules.adamw or bool(hyper.get("decoupled_weight_decay"))
        if decoupled and k > 0:
            return (
                "it holds weight_decay * param as part of the gradient: weight decay was added "
                "to the gradient (L2, as Adam does) instead of applied to the parameter "
                "(decoupled, as AdamW does)"
            )
        return "it is off by weight_decay * param: the weight decay in the gradient is wrong"
    return ""


def explain_update(
    rule: Any,
    hyper: dict[str, Any],
    step: float,
    actual: Tensor,
    before: Tensor,
    grad: Tensor | None,
    state: dict[str, Any],
    tolerance: float,
) -> str:
    """Name the variant of the rule that the actual update matches, if it is a known mistake.

    Evaluated only for a failing parameter, from the state the rule expects after the step:
    Adam without its bias corrections or with eps inside the square root, and SGD whose
    parameter moved with the momentum buffer from before this step.
    """
    variants: dict[str, Tensor] = {}
    lr = num(hyper.get("lr", 0))
    if rule in (adam_rules.adam, adam_rules.adamw) and "exp_avg" in state:
        beta1, beta2 = (num(b) for b in pair_of(hyper, "betas", (0.9, 0.999)))
        eps = num(hyper.get("eps", 1e-8))
        t = step + 1
        m = state["exp_avg"]
        v = state.get("max_exp_avg_sq", state["exp_avg_sq"])
        bias1, bias2 = 1 - beta1**t, 1 - beta2**t
        decay = before * 0
        if rule is adam_rules.adamw or hyper.get("decoupled_weight_decay"):
            decay = -lr * num(hyper.get("weight_decay", 0)) * before
        variants["the rule without its bias corrections (1 - beta1**t, 1 - beta2**t)"] = (
            decay - lr * m / (v.sqrt() + eps)
        )
        variants["the rule with eps inside the square root, sqrt(v_hat + eps)"] = (
            decay - lr * (m / bias1) / (v / bias2 + eps).sqrt()
        )
    if rule is sgd_rules.sgd and "momentum_buffer" in state and grad is not None:
        momentum = num(hyper.get("momentum", 0))
        damp = num(hyper.get("dampening", 0))
        if momentum and not hyper.get("nesterov"):
            g = -grad if hyper.get("maximize") else grad
            g = g + num(hyper.get("weight_decay", 0)) * before
            previous = (state["momentum_buffer"] - (1 - damp) * g) / momentum
            variants["a stale momentum buffer (the one from before this step's update)"] = (
                -lr * previous
            )
    for text, update in variants.items():
        gap = float((actual.double() - update.double()).abs().max())
        if gap <= max(4 * tolerance, 1e-3 * float(update.abs().max())):
            return f"its update matches {text}"
    return ""


def pair_of(hyper: dict[str, Any], key: str, default: tuple[float, float]) -> tuple[Any, Any]:
    value = hyper.get(key, default)
    return value[0], value[1]
