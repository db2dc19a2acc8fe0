"""Compact HTML tables for Jupyter and VS Code notebooks (the objects' ``_repr_html_``).

Notebook front ends strip or scope ``<style>`` blocks differently (GitHub drops them), so every
table here carries inline styles only and no script. The pillar classes keep thin
``_repr_html_`` methods that import this module when a notebook asks for them.

``Diagnosis._repr_html_`` shows the findings as ``findings.py`` draws them for the report.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from .._optim.step_report import FAIL, StateCheck, StepReport
from .._watch.records import BackwardRecord
from .findings import diagnosis_html
from .html import Reportable
from .plots import NormSeries
from .series import norm_series
from .sparkline import SparkScale, fmt_number, sparkline
from .summary import Summary

__all__ = [
    "diagnosis_html",
    "record_html",
    "step_report_html",
    "summary_html",
    "table_html",
    "watch_html",
]

_FONT = "font-family:ui-monospace,SFMono-Regular,Menlo,monospace"
_CELL = "padding:2px 8px;border-bottom:1px solid #d0d7de;white-space:nowrap"
_BAD_ROW = "background:#ffebe9"
_MUTED_ROW = "color:#57606a"
_SCROLL = "max-height:420px;overflow:auto"


def table_html(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Iterable[int] = (),
    row_styles: Sequence[str] | None = None,
) -> str:
    """A plain ``<table>`` with inline styles. Cells are HTML already (escape text first);
    columns in ``right`` are right-aligned; ``row_styles`` gives each row a CSS style.

    >>> table_html(["a", "b"], [["x", "1"]], right=[1])[:6]
    '<table'
    """
    aligned = set(right)

    def style(col: int) -> str:
        return f"{_CELL};text-align:{'right' if col in aligned else 'left'}"

    head = "".join(
        f'<th style="{style(i)};background:#f6f8fa">{html.escape(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = []
    for n, row in enumerate(rows):
        extra = row_styles[n] if row_styles is not None and row_styles[n] else ""
        cells = "".join(f'<td style="{style(i)}">{cell}</td>' for i, cell in enumerate(row))
        body.append(f'<tr style="{extra}">{cells}</tr>' if extra else f"<tr>{cells}</tr>")
    return (
        '<table class="gradscope" style="border-collapse:collapse;'
        'font-variant-numeric:tabular-nums">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _title(text: str) -> str:
    return f'<p style="margin:4px 0"><b>{html.escape(text)}</b></p>'


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def summary_html(summary: Summary, series: Sequence[NormSeries] = ()) -> str:
    """The per-parameter table of one pass; ``series`` adds a norm-over-passes sparkline."""
    by_name = {s.name: s for s in series}
    headers = ["parameter", "shape", "norm", "mean", "std", "abs max", "nan", "inf", "zero%"]
    scale = SparkScale.of(series)  # one scale for every row: heights compare
    headers += ["note"] + ([f"norm over passes ({scale.caption})"] if by_name else [])
    rows, styles = [], []
    for row in summary.rows:
        cells = [
            f'<span style="{_FONT}">{html.escape(row.name)}</span>',
            "×".join(map(str, row.shape)) or "–",
            fmt_number(row.norm),
            fmt_number(row.mean),
            fmt_number(row.std),
            fmt_number(row.abs_max),
            _count(row.nan),
            _count(row.inf),
            "–" if row.zero_fraction is None else f"{100 * row.zero_fraction:.1f}",
            html.escape(row.note),
        ]
        if by_name:
            cells.append(sparkline(by_name.get(row.name), scale))
        rows.append(cells)
        bad = bool(row.nan) or bool(row.inf)
        styles.append(_BAD_ROW if bad else (_MUTED_ROW if row.norm is None else ""))
    title = f"backward pass {summary.index}: {len(summary.rows)} parameters"
    if summary.loss_scale is not None:
        title += f" (statistics unscaled by GradScaler scale {summary.loss_scale:g})"
    parts = [
        _title(title),
        f'<div style="{_SCROLL}">',
        table_html(headers, rows, right=range(2, 9), row_styles=styles),
        "</div>",
    ]
    if summary.errors:
        parts.append(f"<p>{summary.errors} error(s) inside gradscope's hooks: see watch.errors</p>")
    return "".join(parts)


def record_html(record: BackwardRecord) -> str:
    """A :class:`~gradscope.BackwardRecord` as its pass's table."""
    return summary_html(Summary.of(record))


def watch_html(watch: Reportable, heading: str, no_record: str | None = None) -> str:
    """A watch: ``heading`` (its repr), then the newest pass's table with each parameter's norm
    over the recorded passes; ``no_record`` says why there is no table yet."""
    records = watch.records
    parts = [_title(heading)]
    if not records:
        parts.append(f"<p>{html.escape(no_record or 'no backward pass was recorded yet')}</p>")
        return "".join(parts)
    summary = Summary.of(records[-1])
    order = [row.name for row in summary.rows]
    parts.append(summary_html(summary, norm_series(records, order)))
    return "".join(parts)


def _state_cell(state: tuple[StateCheck, ...]) -> str:
    """The optimizer state entries checked for a parameter (shadow mode): ok, FAIL or –."""
    if not state:
        return "–"
    return "<b>FAIL</b>" if any(s.failed for s in state) else "ok"


def step_report_html(report: StepReport) -> str:
    """A filled-in :class:`~gradscope.StepReport`: headline, one row per parameter, problems
    and notes."""
    headers = ["parameter", "group", "max abs diff", "max rel diff", "tolerance", "changed"]
    headers += ["state", "verdict"]
    rows, styles = [], []
    for p in report.params:
        rows.append(
            [
                f'<span style="{_FONT}">{html.escape(p.name)}</span>',
                "–" if p.group is None else str(p.group),
                fmt_number(p.max_abs_diff),
                fmt_number(p.max_rel_diff),
                fmt_number(p.tolerance),
                "yes" if p.changed else "no",
                _state_cell(p.state),
                f"<b>{p.verdict}</b>" if p.verdict == FAIL else html.escape(p.verdict),
            ]
        )
        styles.append(_BAD_ROW if p.verdict == FAIL else (_MUTED_ROW if p.unresolved else ""))
    parts = [
        _title(report.headline()),
        f'<div style="{_SCROLL}">',
        table_html(headers, rows, right=range(1, 6), row_styles=styles),
        "</div>",
    ]
    notes = [("problem", t) for t in report.problems]
    notes += [("reason", f"{p.name}: {'; '.join(p.reasons)}") for p in report.failures]
    notes += [("note", t) for t in report.notes]
    if notes:
        items = "".join(f"<li>{kind}: {html.escape(text)}</li>" for kind, text in notes)
        parts.append(f'<ul style="margin:4px 0">{items}</ul>')
    return "".join(parts)
