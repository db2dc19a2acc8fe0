"""Run every rule on a watch's evidence and order what they found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from .._watch.evidence import Evidence, module_of
from . import connectivity, flow, nonfinite, updates
from .common import Collector
from .diagnosis import Diagnosis
from .finding import KINDS, SEVERITIES, Finding

__all__ = ["diagnose"]

_RULES = (nonfinite.check, connectivity.check, updates.check, flow.check)
_KIND_RANK = {kind: k for k, kind in enumerate(KINDS)}
_SEVERITY_RANK = {s: k for k, s in enumerate(SEVERITIES)}


def _ranker(evidence: Evidence) -> Callable[[Finding], tuple[int, int, int, int]]:
    position = {name: k for k, name in enumerate(evidence.order)}

    def rank(finding: Finding) -> tuple[int, int, int, int]:
        first = min(finding.passes) if finding.passes else 0
        where = min((position.get(p, len(position)) for p in finding.params), default=0)
        return _SEVERITY_RANK[finding.severity], _KIND_RANK[finding.kind], first, where

    return rank


def diagnose(evidence: Evidence) -> Diagnosis:
    """Every finding the evidence supports, errors first and causes before their symptoms."""
    out = Collector()
    for rule in _RULES:
        rule(evidence, out)
    found = sorted(out.findings, key=_ranker(evidence))
    found = _drop_symptoms(found)
    steps = evidence.steps
    forward = evidence.forward
    return Diagnosis(
        findings=tuple(found),
        model=evidence.model,
        passes=len(evidence.records),
        steps=steps.steps if steps is not None else None,
        forwards=forward.forwards if forward is not None else None,
        unchecked=dict(out.unchecked),
    )


_NONFINITE = ("nonfinite_forward", "nonfinite_backward", "nonfinite_loss")


def _drop_symptoms(found: list[Finding]) -> list[Finding]:
    """Leave out what another finding already explains, saying so in that finding.

    - NaN/Inf that appears only after gradients exploded is the explosion's overflow;
    - a parameter with no gradient has no update either;
    - the layers of a vanishing gradient, or of a gradient clipped far below its size on
      every step, update too little;
    - a layer whose units are all dead zeroes the gradient of every layer before it.
    """
    missing = {
        p for f in found if f.kind == "no_gradient" and f.severity == "error" for p in f.params
    }
    vanishing = {module_of(p) for f in found if f.kind == "vanishing" for p in f.params}
    whole_layer_dead = any(
        f.kind == "dead_units" and f.evidence.get("share", 0) >= 0.99 for f in found
    )
    clipping = any(f.kind == "clipping_always" and f.severity == "warning" for f in found)
    exploding = next(
        (f for f in found if f.kind == "exploding" and "peak pass" in f.evidence), None
    )
    too_high = next(
        (f for f in found if f.kind == "update_ratio" and "after pass" in f.evidence), None
    )
    if (
        exploding is not None
        and too_high is not None
        and too_high.evidence["after pass"] < exploding.evidence["peak pass"]
        and too_high.evidence.get("|g|/|p| before that step", 0.0) < 1.0
    ):
        # The step was too large for a gradient of ordinary size: the learning rate, not the
        # gradient, started it, and the explosion followed.
        cause = replace(
            too_high,
            severity="error",
            evidence={
                **too_high.evidence,
                "then": f"the gradient norm jumped {exploding.evidence['growth']:.2g}x at pass "
                f"{exploding.evidence['peak pass']}",
            },
        )
        found = [cause if f is too_high else f for f in found if f is not exploding]
        found.sort(key=lambda f: (_SEVERITY_RANK[f.severity], _KIND_RANK[f.kind]))
        exploding = None
    out = []
    for finding in found:
        if finding.kind in ("not_updated", "update_ratio") and missing.issuperset(finding.params):
            continue
        if (
            finding.kind in ("update_ratio", "not_updated")
            and finding.severity != "error"
            and vanishing.issuperset(module_of(p) for p in finding.params)
        ):
            continue
        if finding.kind == "update_ratio" and clipping and "below" in finding.message:
            continue  # clipping every step by orders of magnitude makes every update small
        if finding.kind == "not_updated" and finding.severity != "error" and whole_layer_dead:
            continue  # a layer with no live unit zeroes the gradient of what comes before it
        if (
            exploding is not None
            and finding.kind in _NONFINITE
            and finding.passes
            and min(finding.passes) > exploding.evidence["peak pass"]
        ):
            continue
        out.append(finding)
    return out
