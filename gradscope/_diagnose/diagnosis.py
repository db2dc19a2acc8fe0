"""The result of ``Watch.diagnose()``: findings, most severe first, and what was not checked."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from .finding import KINDS, SEVERITIES, Finding

__all__ = ["Diagnosis"]


@dataclass(frozen=True, eq=False)
class Diagnosis(Sequence[Finding]):
    """An ordered collection of :class:`Finding` (errors first, causes before symptoms).

    ``ok`` is True when no finding is an error or a warning; ``unchecked`` says, per kind, why
    it could not be checked (``watch(net, optimizer=opt)`` enables the step checks). ``str()``
    reads as a short report.
    """

    findings: tuple[Finding, ...]
    model: str = ""
    passes: int = 0
    steps: int | None = None  # optimizer steps seen; None without watch(optimizer=...)
    forwards: int | None = None  # forward passes checked; None with check_forward=False
    unchecked: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there is no error and no warning (info findings are allowed)."""
        return not any(f.severity in ("error", "warning") for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        """The error findings, in order."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """The warning findings, in order."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def kinds(self) -> list[str]:
        """The kinds found, in order (a kind found twice is listed once)."""
        return list(dict.fromkeys(f.kind for f in self.findings))

    def of_kind(self, kind: str) -> list[Finding]:
        """The findings of one kind (see ``gradscope.Finding`` for the vocabulary)."""
        if kind not in KINDS:
            raise ValueError(f"unknown finding kind {kind!r}; kinds are: {', '.join(KINDS)}")
        return [f for f in self.findings if f.kind == kind]

    def headline(self) -> str:
        """The first line of ``str()``: the model, what was seen, how many findings of each
        severity."""
        counts = [
            f"{n} {s}{'s' if n != 1 else ''}"
            for s in SEVERITIES
            if (n := sum(f.severity == s for f in self.findings))
        ]
        seen = [f"{self.passes} backward pass{'es' if self.passes != 1 else ''}"]
        if self.steps is not None:
            seen.append(f"{self.steps} optimizer step{'s' if self.steps != 1 else ''}")
        what = ", ".join(counts) if counts else "no problem found"
        model = f" of {self.model}" if self.model else ""
        return f"gradscope diagnosis{model} ({', '.join(seen)}): {what}"

    def __str__(self) -> str:
        lines = [self.headline()]
        for k, finding in enumerate(self.findings, 1):
            text = str(finding).split("\n")
            lines.append(f"{k}. {text[0]}")
            lines.extend("  " + line for line in text[1:])
        if self.unchecked:
            lines.append(f"not checked: {self.unchecked_text()}")
        return "\n".join(lines)

    def unchecked_text(self) -> str:
        """The kinds not checked, grouped by why: ``a, b (needs ...); c (...)``."""
        by_reason: dict[str, list[str]] = {}
        for kind, why in self.unchecked.items():
            by_reason.setdefault(why, []).append(kind)
        return "; ".join(f"{', '.join(kinds)} ({why})" for why, kinds in by_reason.items())

    def __repr__(self) -> str:
        return f"<gradscope.Diagnosis: {self.headline().partition(': ')[2]}>"

    @overload
    def __getitem__(self, index: int) -> Finding: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Finding]: ...
    def __getitem__(self, index: int | slice) -> Finding | Sequence[Finding]:
        return self.findings[index]

    def __len__(self) -> int:
        return len(self.findings)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def _repr_html_(self) -> str:
        """Jupyter/VS Code: the findings as a table."""
        from .._report.notebook import diagnosis_html

        return diagnosis_html(self)
