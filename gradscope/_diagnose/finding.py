"""One problem the diagnosis found, and the fixed vocabulary of kinds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["KINDS", "SEVERITIES", "Finding", "Severity", "names_text"]

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")

# Every kind a finding can have, in the order findings of one severity are listed: causes
# before the symptoms they produce (a NaN born in forward makes every gradient NaN).
KINDS: dict[str, str] = {
    "nonfinite_input": "the data given to the model already holds NaN/Inf",
    "nonfinite_forward": "a NaN/Inf was born in the forward pass",
    "nonfinite_loss": "the gradient the loss sends into the model is NaN/Inf",
    "loss_scale_collapse": "GradScaler keeps skipping steps, its scale collapsing toward 0",
    "exploding": "gradient norms grow by orders of magnitude (over passes or across depth)",
    "nonfinite_backward": "a NaN/Inf was born in the backward pass from finite values",
    "no_gradient": "a trainable parameter never gets a gradient",
    "not_in_optimizer": "a parameter gets gradients but no optimizer holds it",
    "grads_accumulating": ".grad is never cleared between optimizer steps (no zero_grad)",
    "frozen": "requires_grad=False, yet the optimizer holds it",
    "clipping_always": "gradient clipping cuts the gradient on (nearly) every step",
    "vanishing": "gradients shrink by orders of magnitude toward the input",
    "update_ratio": "update-to-weight ratio far outside the usual band: lr too high or too low",
    "dead_units": "most units of a layer get exactly zero gradient, pass after pass",
    "not_updated": "the optimizer holds it and it has a gradient, but it never moves",
    "skipped_steps": "optimizer steps are skipped (NaN/Inf gradients under GradScaler)",
}


def names_text(names: tuple[str, ...] | list[str], limit: int = 6) -> str:
    """``a, b, c and 4 more``."""
    shown = list(names[:limit])
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _passes_text(passes: tuple[int, ...]) -> str:
    if not passes:
        return ""
    runs: list[str] = []
    start = prev = passes[0]
    for p in (*passes[1:], None):
        if p is not None and p == prev + 1:
            prev = p
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    text = ", ".join(runs[:6]) + (" ..." if len(runs) > 6 else "")
    return f"pass{'es' if len(passes) > 1 else ''} {text}"


@dataclass(frozen=True, eq=False)
class Finding:
    """One problem: what it is, where, since when, the numbers, and the likely fixes.

    ``kind`` is one of a fixed vocabulary (see the diagnosis page of the documentation),
    ``severity`` ``"error"``, ``"warning"`` or ``"info"``; ``params`` (parameter names) and
    ``module`` (a qualified module name, ``""`` for the model itself) say where, ``passes``
    which backward passes show it, ``evidence`` the numbers; ``message`` is one sentence and
    ``hint`` the most likely fixes.

    >>> f = Finding("no_gradient", "error", "fc.weight got no gradient.", "Remove .detach().",
    ...             params=("fc.weight",), passes=(1, 2, 3))
    >>> print(f)
    error no_gradient: fc.weight got no gradient.
      where: fc.weight; passes 1-3
      fix: Remove .detach().
    """

    kind: str
    severity: Severity
    message: str  # one sentence a practitioner understands
    hint: str  # the most likely fixes
    params: tuple[str, ...] = ()
    module: str | None = None  # qualified module name ("" is the model itself)
    passes: tuple[int, ...] = ()  # backward passes that show it
    evidence: Mapping[str, Any] = field(default_factory=dict)  # the numbers

    def where(self) -> str:
        """``params; module 'm'; passes 1-3``: the finding's place, as ``str()`` shows it."""
        parts = []
        if self.params:
            parts.append(names_text(self.params))
        if self.module is not None:
            parts.append(f"module '{self.module}'" if self.module else "the model's forward()")
        if self.passes:
            parts.append(_passes_text(self.passes))
        return "; ".join(parts)

    def evidence_text(self) -> str:
        """The evidence as ``key: value; ...``, numbers to three significant digits."""
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in self.evidence.items())

    def __str__(self) -> str:
        lines = [f"{self.severity} {self.kind}: {self.message}"]
        where = self.where()
        if where:
            lines.append(f"  where: {where}")
        evidence = self.evidence_text()
        if evidence:
            lines.append(f"  evidence: {evidence}")
        if self.hint:
            lines.append(f"  fix: {self.hint}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Finding({self.kind!r}, {self.severity!r}, params={self.params!r}, "
            f"module={self.module!r})"
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        shown = [_fmt(v) for v in value[:8]]
        return "[" + ", ".join(shown) + (", ..." if len(value) > 8 else "") + "]"
    return str(value)
