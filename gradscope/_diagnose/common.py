"""What the rules share: a collector for findings, and small readings of the evidence."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .._watch.evidence import Evidence, module_of
from .._watch.records import BackwardRecord
from .finding import Finding

__all__ = [
    "Collector",
    "common_module",
    "median",
    "norm",
    "ordered",
    "rms",
    "total_norm",
]


@dataclass
class Collector:
    """Findings and the kinds that could not be checked, gathered by the rules."""

    findings: list[Finding] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def skip(self, kind: str, why: str) -> None:
        self.unchecked.setdefault(kind, why)


def common_module(params: Iterable[str]) -> str | None:
    """The deepest module that owns every one of ``params``: "" when they all belong to the
    model itself, None when they sit in different top-level modules (or there are none)."""
    paths = [module_of(p).split(".") if module_of(p) else [] for p in params]
    if not paths:
        return None
    prefix = paths[0]
    for path in paths[1:]:
        k = 0
        while k < min(len(prefix), len(path)) and prefix[k] == path[k]:
            k += 1
        prefix = prefix[:k]
    if not prefix and any(paths):
        return None
    return ".".join(prefix)


def norm(record: BackwardRecord, name: str) -> float | None:
    """The gradient norm recorded for ``name`` in ``record`` (unscaled), or None."""
    grad = record.grads.get(name)
    return None if grad is None else grad.recorded.norm


def total_norm(record: BackwardRecord, names: Iterable[str] | None = None) -> float:
    """The norm over all (or ``names``') gradients of one pass, as clip_grad_norm_ sees it."""
    total = 0.0
    for name, grad in record.grads.items():
        if names is None or name in names:
            value = grad.recorded.norm
            total += value * value
    return math.sqrt(total)


def rms(ev: Evidence, name: str, value: float) -> float:
    """A norm as a root mean square per element (comparable across tensor sizes)."""
    numel = math.prod(ev.shapes.get(name, ())) or 1
    return value / math.sqrt(numel)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def ordered(ev: Evidence, names: Iterable[str]) -> tuple[str, ...]:
    """``names`` in the evidence's order (input side first)."""
    wanted = set(names)
    return tuple(n for n in ev.order if n in wanted) + tuple(sorted(wanted - set(ev.order)))
