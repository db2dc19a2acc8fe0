"""Guesses at the mistake behind a failing step, from how the actual update relates to the
expected one (a multiple of it, its opposite, nothing) and, for a state entry, from the rule.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["guess", "state_hint"]


def guess(actual: Tensor, expected: Tensor, lr: float | None, group: int) -> str:
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


def state_hint(entry: str, rule: str) -> str:
    """The rule's formula for a state entry, for a failure message ('' if none is known)."""
    formula = _HINTS.get(entry, "")
    return f"the rule keeps {formula}" if formula else ""
