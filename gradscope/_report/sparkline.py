"""Small HTML/SVG pieces shared by the report page and the notebook tables."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from .._text import printable
from .plots import NormSeries

__all__ = ["SparkScale", "fmt_number", "sparkline"]

_ACCENT, _BAD, _GRID = "#08519c", "#cb181d", "#d0d7de"
_WIDTH, _HEIGHT, _PAD = 120, 24, 2


def fmt_number(value: float | None) -> str:
    """A statistic as the tables show it: three significant decimals, "–" when unknown.

    >>> fmt_number(0.000123456), fmt_number(None)
    ('1.235e-04', '–')
    """
    return "–" if value is None else f"{value:.3e}"


class SparkScale:
    """One log10 scale for every sparkline of a table, so that rows can be compared.

    It spans whole powers of ten around the finite, positive norms of all the series; the
    sparklines draw a faint line at each power of ten and ``caption`` names the range.

    >>> s = SparkScale.of([NormSeries("w", (1, 2), (0.02, 0.5))])
    >>> (s.low, s.high), s.caption
    ((-2, 0), 'log scale 1e-02 to 1e+00')
    """

    def __init__(self, low: int, high: int) -> None:
        if high <= low:
            high = low + 1
        self.low, self.high = low, high

    @classmethod
    def of(cls, series: Sequence[NormSeries]) -> SparkScale:
        values = [v for s in series for v in s.norms if math.isfinite(v) and v > 0]
        if not values:
            return cls(0, 1)
        return cls(math.floor(math.log10(min(values))), math.ceil(math.log10(max(values))))

    @property
    def caption(self) -> str:
        return f"log scale 1e{self.low:+03d} to 1e{self.high:+03d}"

    def y(self, value: float) -> float:
        """The y coordinate of a positive value (values outside the range are clamped)."""
        level = (math.log10(value) - self.low) / (self.high - self.low)
        level = min(1.0, max(0.0, level))
        return _HEIGHT - _PAD - (_HEIGHT - 2 * _PAD) * level


def sparkline(series: NormSeries | None, scale: SparkScale | None = None) -> str:
    """A 120x24 inline SVG of one parameter's norm over the passes (log scale; NaN/Inf passes
    are red dots along the top, zero norms sit on the bottom edge).

    Give every row of a table the same ``scale`` (:class:`SparkScale`) so the heights compare;
    without one the line spans its own range. Colours are SVG attributes, so it draws without
    any CSS (in a notebook) and the report page's stylesheet can still override them."""
    if series is None or not series.norms:
        return ""
    scale = scale if scale is not None else SparkScale.of([series])
    n = len(series.norms)
    grid = [
        f'<line class="grid" x1="0" x2="{_WIDTH}" y1="{y:.1f}" y2="{y:.1f}" stroke="{_GRID}" '
        'stroke-width="0.6"/>'
        for y in (scale.y(10.0**e) for e in range(scale.low, scale.high + 1))
    ]
    points, bad = [], []
    for i, value in enumerate(series.norms):
        x = _PAD + (_WIDTH - 2 * _PAD) * (i / (n - 1) if n > 1 else 0.5)
        if not math.isfinite(value):
            bad.append(x)
            continue
        y = scale.y(value) if value > 0 else _HEIGHT - _PAD
        points.append(f"{x:.1f},{y:.1f}")
    finite = [v for v in series.norms if math.isfinite(v)]
    span = f", min {min(finite):.3e}, max {max(finite):.3e}" if finite else ""
    label = f"{series.name}: norm over {n} passes, last {series.norms[-1]:.3e}{span}"
    parts = [
        f'<svg class="spark" width="{_WIDTH}" height="{_HEIGHT}" role="img" '
        f'aria-label="{html.escape(printable(label))}"><title>{html.escape(printable(label))}'
        "</title>",
        *grid,
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
        f'<circle class="bad" cx="{bx:.1f}" cy="{_PAD + 2}" r="2.5" fill="{_BAD}"/>' for bx in bad
    ]
    parts.append("</svg>")
    return "".join(parts)
