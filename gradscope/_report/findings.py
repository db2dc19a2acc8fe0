"""The diagnosis as HTML: the report's opening section and the notebook display.

Inline styles only (notebook front ends strip ``<style>`` blocks), no script.
"""

from __future__ import annotations

import html

from .._diagnose.diagnosis import Diagnosis
from .._diagnose.finding import Finding
from .._text import printable

__all__ = ["diagnosis_html", "finding_html"]

_COLOURS = {
    "error": ("#cf222e", "#ffebe9"),
    "warning": ("#9a6700", "#fff8c5"),
    "info": ("#0969da", "#ddf4ff"),
}
_MONO = "font-family:ui-monospace,SFMono-Regular,Menlo,monospace"


def _text(value: str) -> str:
    return html.escape(printable(value))


def finding_html(number: int, finding: Finding) -> str:
    """One finding as a coloured block: severity, kind, message, where, evidence, fix."""
    edge, fill = _COLOURS[finding.severity]
    badge = (
        f'<span style="background:{edge};color:#fff;border-radius:8px;padding:0 6px;'
        f'font-size:12px">{finding.severity}</span>'
    )
    lines = [
        f'<div>{number}. {badge} <b style="{_MONO}">{_text(finding.kind)}</b> '
        f"{_text(finding.message)}</div>"
    ]
    where = finding.where()
    if where:
        lines.append(f'<div><span style="color:#57606a">where:</span> {_text(where)}</div>')
    evidence = finding.evidence_text()
    if evidence:
        lines.append(f'<div><span style="color:#57606a">evidence:</span> {_text(evidence)}</div>')
    if finding.hint:
        lines.append(f'<div><span style="color:#57606a">fix:</span> {_text(finding.hint)}</div>')
    return (
        f'<div class="finding {finding.severity}" style="border-left:4px solid {edge};'
        f'background:{fill};padding:6px 10px;margin:6px 0;line-height:1.45">'
        + "".join(lines)
        + "</div>"
    )


def diagnosis_html(diagnosis: Diagnosis) -> str:
    """A :class:`~gradscope.Diagnosis`: its headline, every finding, what was not checked.

    >>> "no problem found" in diagnosis_html(Diagnosis((), model="Net", passes=3))
    True
    """
    ok = diagnosis.ok
    parts = [
        '<div class="diagnosis">',
        f'<p style="margin:4px 0"><b>{_text(diagnosis.headline())}</b></p>',
    ]
    if not diagnosis.findings:
        parts.append(
            '<div style="border-left:4px solid #1a7f37;background:#dafbe1;padding:6px 10px">'
            "No error, warning or note: nothing the checks look for was found.</div>"
        )
    parts.extend(finding_html(k, f) for k, f in enumerate(diagnosis.findings, 1))
    if ok and diagnosis.findings:
        parts.append('<p style="margin:4px 0;color:#57606a">No error or warning.</p>')
    if diagnosis.unchecked:
        text = _text(diagnosis.unchecked_text())
        parts.append(f'<p style="margin:4px 0;color:#57606a">Not checked: {text}</p>')
    parts.append("</div>")
    return "".join(parts)
