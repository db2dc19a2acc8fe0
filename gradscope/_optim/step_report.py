"""The result of checking one optimizer step: a verdict per parameter, a table, one error."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import GradscopeError, StepMismatch

__all__ = ["ParamCheck", "StateCheck", "StepReport", "merge"]

OK, FAIL, SKIPPED, UNCHECKED = "ok", "FAIL", "skipped", "unchecked"
UNRESOLVED = "unresolved"
STRUCTURAL = (
    "a gradient in no param group; moved without a gradient, or with lr 0; did not move "
    "although its gradient is non-zero and lr > 0"
)


@dataclass(frozen=True)
class StateCheck:
    """One optimizer state entry (``exp_avg``, ``momentum_buffer``, ``step``) of one parameter.

    ``max_abs_diff`` is max|optimizer's value - reference's value| after the step and
    ``tolerance`` its bound; both None when the entry is missing. ``reason`` says what is wrong.
    """

    entry: str
    verdict: str
    max_abs_diff: float | None = None
    tolerance: float | None = None
    reason: str = ""

    @property
    def failed(self) -> bool:
        """True when this state entry did not match the reference rule."""
        return self.verdict == FAIL


@dataclass(frozen=True)
class ParamCheck:
    """One parameter's outcome in one step.

    ``max_abs_diff`` is max|after - reference|, ``max_rel_diff`` the same divided by the largest
    reference update (1.0 means "off by a whole step"), ``tolerance`` the bound from
    :func:`gradscope._optim.tolerance.tolerance`; all three are None when values were not checked.
    ``verdict`` is "ok", "FAIL", "skipped" (no gradient, left alone), "unchecked" (values
    not checked: ``values=False``) or "unresolved": the values matched, but the reference's
    whole update (``max_update``, ``max|reference - before|``) is within the tolerance,
    so even a step off by all of its size would have matched (a tiny lr or gradient in float32;
    check a later step, or in float64). ``reasons`` says what went wrong and the likely fix.
    ``state`` holds one :class:`StateCheck` per optimizer state entry compared (shadow mode),
    and ``optimizer`` the index of its optimizer when several were checked together.
    """

    name: str
    group: int | None
    changed: bool
    verdict: str
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    tolerance: float | None = None
    reasons: tuple[str, ...] = ()
    state: tuple[StateCheck, ...] = ()
    optimizer: int = 0
    max_update: float | None = None

    @property
    def failed(self) -> bool:
        """True when this parameter's step did not match the reference."""
        return self.verdict == FAIL

    @property
    def unresolved(self) -> bool:
        """True when the step matched but was too small for a wrong step to show."""
        return self.verdict == UNRESOLVED


@dataclass
class StepReport:
    """What :func:`gradscope.check_step` found about one ``optimizer.step()``.

    >>> import torch, gradscope
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> net(torch.ones(1, 3)).sum().backward()
    >>> with gradscope.check_step(opt, params=net) as report:
    ...     opt.step()
    >>> report.ok, [p.name for p in report.params]
    (True, ['weight', 'bias'])
    """

    optimizer: str = ""
    step: int = 0
    reference: str | None = None
    params: list[ParamCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state_checked: bool = False
    coverage: str = ""
    _ready: bool = field(default=False, repr=False)

    def _require_ready(self) -> None:
        if not self._ready:
            raise GradscopeError(
                "this StepReport is filled in when the `with gradscope.check_step(...)` block "
                "ends; read it after the block"
            )

    @property
    def ok(self) -> bool:
        """True when no parameter failed and no step-wide problem was found."""
        self._require_ready()
        return not self.problems and not any(p.failed for p in self.params)

    @property
    def failures(self) -> list[ParamCheck]:
        """The parameters that failed, in optimizer order (then those in no param group)."""
        self._require_ready()
        return [p for p in self.params if p.failed]

    @property
    def values_checked(self) -> bool:
        """False when only the structural checks ran (``values=False``)."""
        return self.reference is not None

    def checked(self) -> str:
        """What this step was checked for, in words."""
        if self.reference is None:
            return "structural checks only (values=False), values NOT checked"
        what = "parameters and optimizer state" if self.state_checked else "parameters only"
        coverage = f"; {self.coverage}" if self.coverage else ""
        return f"checked against {self.reference} ({what}{coverage})"

    def __getitem__(self, name: str) -> ParamCheck:
        for check in self.params:
            if check.name == name:
                return check
        known = ", ".join(repr(p.name) for p in self.params[:8])
        raise KeyError(f"no parameter {name!r} in this report; it has {known}")

    def headline(self) -> str:
        """One line: the optimizer, what it was checked against, and how many failed."""
        self._require_ready()
        checked = self.checked()
        failed = len(self.failures)
        verdict = "ok" if self.ok else f"{failed} of {len(self.params)} parameters FAILED"
        if not self.ok and not failed:
            verdict = "FAILED"
        unresolved = sum(p.unresolved for p in self.params)
        if unresolved:
            verdict += f" ({unresolved} of {len(self.params)} unresolved: step within tolerance)"
        return f"step {self.step} of {self.optimizer}: {checked}: {verdict}"

    def table(self) -> str:
        """A fixed-width table, one row per parameter."""
        header = (
            "parameter",
            "group",
            "max abs diff",
            "max rel diff",
            "tolerance",
            "changed",
            "state",
        )
        several = any(p.optimizer for p in self.params)
        rows = [
            (
                p.name,
                _group(p, several),
                _number(p.max_abs_diff),
                _number(p.max_rel_diff),
                _number(p.tolerance),
                "yes" if p.changed else "no",
                _state(p),
                p.verdict,
            )
            for p in self.params
        ]
        widths = [max(len(r[i]) for r in [(*header, "verdict"), *rows]) for i in range(8)]
        lines = []
        for row in [(*header, "verdict"), *rows]:
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  ".join(cells).rstrip())
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def _reasons(self) -> list[str]:
        """The failures grouped by reason: each reason once, then what it applies to."""
        grouped: dict[str, list[ParamCheck]] = {}
        states: dict[tuple[str, str], list[tuple[ParamCheck, StateCheck]]] = {}
        for p in self.failures:
            sentences = {f"{s.entry} of {p.name} {s.reason}" for s in p.state if s.failed}
            own = [r for r in p.reasons if r not in sentences]
            if own:
                grouped.setdefault("; ".join(own), []).append(p)
            for s in p.state:
                if s.failed:
                    states.setdefault((s.entry, s.reason), []).append((p, s))
        lines = []
        for reason, checks in grouped.items():
            lines.append(f"  {reason}:")
            for p in checks:
                numbers = ""
                if _values_failed(p):
                    numbers = (
                        f": max abs diff {_number(p.max_abs_diff)} (tolerance "
                        f"{_number(p.tolerance)}), {_number(p.max_rel_diff)} of the step"
                    )
                lines.append(f"    {p.name} ({_where(p)}){numbers}")
        for (entry, reason), pairs in states.items():
            if len(pairs) == 1:
                p, s = pairs[0]
                lines.append(f"  {entry} of {p.name} {reason}{_state_numbers(s, ' (', ')')}")
                continue
            lines.append(f"  {entry} of {len(pairs)} parameters {reason}:")
            if not any(_state_numbers(s, "", "") for _, s in pairs):
                lines.append("    " + ", ".join(p.name for p, _ in pairs))
                continue
            for p, s in pairs:
                lines.append(f"    {p.name} ({_where(p)}){_state_numbers(s, ': ', '')}")
        return lines

    def __str__(self) -> str:
        if not self._ready:
            return "StepReport (not filled in yet: the check_step block has not ended)"
        parts = [self.headline(), self.table()]
        if self.reference is None:
            parts.append(f"checks run: {STRUCTURAL}")
        parts += [f"problem: {text}" for text in self.problems]
        parts += self._reasons()
        parts += [f"note: {text}" for text in self.notes]
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        """Jupyter/VS Code: the headline, one table row per parameter, problems and notes."""
        if not self._ready:
            return f"<p>{html.escape(str(self))}</p>"
        from .._report.notebook import step_report_html

        return step_report_html(self)

    def failure_message(self) -> str:
        """Every failure at once: step-wide problems, then each reason with its parameters."""
        self._require_ready()
        lines = [self.headline()]
        lines += [f"  {text}" for text in self.problems]
        lines += self._reasons()
        lines.append(self.table())
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise :class:`gradscope.StepMismatch` listing every failing parameter, if any."""
        if not self.ok:
            raise StepMismatch(self.failure_message())


def _where(p: ParamCheck) -> str:
    return "in no param group" if p.group is None else f"param group {p.group}"


def _state_numbers(s: StateCheck, start: str, end: str) -> str:
    if s.max_abs_diff is None or s.tolerance is None or s.reason.startswith("was not updated"):
        return ""
    if s.entry == "step" or s.max_abs_diff <= s.tolerance:
        return ""
    text = f"max abs diff {_number(s.max_abs_diff)} (tolerance {_number(s.tolerance)})"
    return f"{start}{text}{end}"


def _group(p: ParamCheck, several: bool) -> str:
    if p.group is None:
        return "-"
    return f"{p.optimizer}:{p.group}" if several else str(p.group)


def _state(p: ParamCheck) -> str:
    if not p.state:
        return "-"
    return "FAIL" if any(s.failed for s in p.state) else "ok"


def _values_failed(p: ParamCheck) -> bool:
    if p.max_abs_diff is None or p.tolerance is None:
        return False
    return not p.max_abs_diff <= p.tolerance


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value) or math.isinf(value) or value == 0:
        return str(value) if value != 0 else "0"
    return f"{value:.2e}"


def merge(
    report: StepReport,
    outcomes: Sequence[Any],
    references: Sequence[str | None],
) -> None:
    """Fill ``report`` from the outcomes of one or more optimizers' steps; it can be read from
    then on (this module owns the report's private state)."""
    texts = [r for r in references if r]
    report.reference = " and ".join(dict.fromkeys(texts)) if texts else None
    for outcome in outcomes:
        report.params += outcome.params
        report.problems += outcome.problems
        report.notes += outcome.notes
        report.state_checked |= outcome.state_checked
    report._ready = True
