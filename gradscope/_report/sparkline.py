"""Small HTML/SVG pieces shared by the report page and the notebook tables."""

from __future__ import annotations

import html
import math

from .._text import printable
from .plots import NormSeries

__all__ = ["fmt_number", "sparkline"]

_ACCENT, _BAD = "#08519c", "#cb181d"


def fmt_number(value: float | None) -> str:
    """A statistic as the tables show it: three significant decimals, "–" when unknown.

    >>> fmt_number(0.000123456), fmt_number(None)
    ('1.235e-04', '–')
    """
    return "–" if value is None else f"{value:.3e}"


def sparkline(series: NormSeries | None) -> str:
    """A 120x24 inline SVG of one parameter's norm over the passes (log scale; NaN/Inf passes
    are red dots along the top). Colours are SVG attributes, so it draws without any CSS (in a
    notebook) and the report page's stylesheet can still override them."""
    if series is None or not series.norms:
        return ""
    width, height, pad = 120, 24, 2
    finite = [v for v in series.norms if math.isfinite(v) and v > 0]
    if not finite:
        low = high = 1.0
    else:
        low, high = math.log10(min(finite)), math.log10(max(finite))
    span = high - low or 1.0
    n = len(series.norms)
    points, bad = [], []
    for i, value in enumerate(series.norms):
        x = pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5)
        if not math.isfinite(value):
            bad.append(x)
            continue
        level = (math.log10(value) - low) / span if value > 0 else 0.0
        points.append(f"{x:.1f},{height - pad - (height - 2 * pad) * level:.1f}")
    label = f"{series.name}: norm over {n} passes, last {series.norms[-1]:.3e}"
    parts = [
        f'<svg class="spark" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(printable(label))}"><title>{html.escape(printable(label))}</title>'
    ]
    if len(points) > 1:
        parts.append(
            f'<polyline points="{" ".join(points)}" fill="none" stroke="{_ACCENT}" '
            'stroke-width="1.3"/>'
        )
    elif points:
        cx, cy = points[0].split(",")
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{_ACCENT}"/>')
    parts += [
        f'<circle class="bad" cx="{bx:.1f}" cy="{pad + 2}" r="2.5" fill="{_BAD}"/>' for bx in bad
    ]
    parts.append("</svg>")
    return "".join(parts)
