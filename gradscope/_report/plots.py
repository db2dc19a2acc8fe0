"""The report's two charts drawn with matplotlib (the ``plot`` extra), returned as SVG text.

matplotlib is imported inside the functions, never at import time, and only through
``matplotlib.figure.Figure``: no pyplot, no backend switch, no global state left behind.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import GradscopeError
from .._text import printable

__all__ = ["LayerFlow", "NormSeries", "flow_svg", "norms_svg", "require_matplotlib"]

PLOT_HINT = "pip install gradscope[plot]"
_LOG_FLOOR = 1e-30  # log axes cannot show 0: zero gradients are drawn at the axis floor


@dataclass(frozen=True)
class LayerFlow:
    """One layer's bar in the gradient-flow chart: mean and max of |grad| over its parameters."""

    layer: str
    mean_abs: float | None
    max_abs: float | None
    finite: bool = True
    missing: str = ""  # why the layer has no bar: "no gradient" or "frozen"; "" when it has one


@dataclass(frozen=True)
class NormSeries:
    """One parameter's gradient norm in every recorded pass (NaN/Inf kept as they were)."""

    name: str
    passes: tuple[int, ...]
    norms: tuple[float, ...]


def require_matplotlib() -> Any:
    """The ``matplotlib.figure`` module, or a GradscopeError saying how to install it."""
    try:
        from matplotlib import figure
    except ImportError:
        raise GradscopeError(f"the plots need matplotlib: {PLOT_HINT}") from None
    return figure


def _to_svg(fig: Any) -> str:
    import matplotlib

    buffer = io.StringIO()
    # fonttype "none" keeps text as <text> (small, selectable, no embedded glyph paths).
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "gradscope"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()


def _positive(value: float | None) -> float:
    if value is None or not math.isfinite(value) or value <= 0:
        return _LOG_FLOOR
    return value


def flow_svg(layers: Sequence[LayerFlow], title: str) -> str:
    """Bars of mean and max |grad| per layer on a log axis, input side first.

    A layer without a gradient keeps its place on the axis, with no bar and its reason written
    where the bar would be, in grey.

    >>> svg = flow_svg([LayerFlow("fc", 1e-3, 1e-1)], "pass 1")  # doctest: +SKIP
    """
    if not layers:
        raise GradscopeError("flow_svg() needs at least one layer")
    figure = require_matplotlib()
    # As wide as the report's column (about 11 inches at 96 dpi), so it is drawn at its size.
    fig = figure.Figure(figsize=(max(11.0, 0.35 * len(layers) + 2.0), 4.2))
    ax = fig.add_subplot()
    xs = range(len(layers))
    drawn = [(x, layer) for x, layer in zip(xs, layers, strict=True) if not layer.missing]
    maxima = [_positive(layer.max_abs) for _, layer in drawn]
    means = [_positive(layer.mean_abs) for _, layer in drawn]
    bar_xs = [x for x, _ in drawn]
    ax.bar(bar_xs, maxima, width=0.8, color="#9ecae1", label="max |grad|", zorder=2)
    ax.bar(bar_xs, means, width=0.45, color="#08519c", label="mean |grad|", zorder=3)
    ax.set_yscale("log")
    shown = [v for v in [*maxima, *means] if v > _LOG_FLOOR]
    if shown:
        ax.set_ylim(min(shown) / 10, max(shown) * 10)
    else:
        ax.set_ylim(1e-3, 1e1)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    for x, layer in zip(xs, layers, strict=True):
        if layer.missing:
            ax.axvspan(x - 0.4, x + 0.4, color="#eaeef2", zorder=1)
            ax.text(
                x,
                0.5,
                layer.missing,
                transform=ax.get_xaxis_transform(),
                rotation=90,
                ha="center",
                va="center",
                color="#57606a",
                fontsize=9,
            )
        elif not layer.finite:
            ax.annotate(
                "NaN/Inf",
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="bottom",
                color="#cb181d",
                fontsize=8,
            )
    ax.set_xticks(list(xs), [printable(layer.layer) for layer in layers], rotation=45, ha="right")
    for label, layer in zip(ax.get_xticklabels(), layers, strict=True):
        if layer.missing:
            label.set_color("#57606a")
        elif not layer.finite:
            label.set_color("#cb181d")
    ax.set_ylabel("|gradient| (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="major", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="upper right")
    return _to_svg(fig)


def norms_svg(series: Sequence[NormSeries], title: str) -> str:
    """One line per parameter: its gradient norm over the recorded passes, log axis.

    Non-finite norms are drawn as red crosses on the top edge of the chart.
    """
    if not series:
        raise GradscopeError("norms_svg() needs at least one parameter")
    figure = require_matplotlib()
    fig = figure.Figure(figsize=(11.0, 4.2))  # the report's column width, as the flow chart
    ax = fig.add_subplot()
    finite_values = [v for s in series for v in s.norms if math.isfinite(v) and v > 0]
    for s in series:
        points = [(p, v) for p, v in zip(s.passes, s.norms, strict=True)]
        ax.plot(
            [p for p, _ in points],
            [_positive(v) if math.isfinite(v) else math.nan for _, v in points],
            marker="." if len(points) < 40 else None,
            linewidth=1.2,
            label=printable(s.name),
        )
        bad = [p for p, v in points if not math.isfinite(v)]
        if bad:
            ax.plot(
                bad,
                [1.0] * len(bad),
                "x",
                color="#cb181d",
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
    ax.set_yscale("log")
    if finite_values:
        ax.set_ylim(min(finite_values) / 3, max(finite_values) * 3)
    ax.set_xlabel("backward pass")
    ax.set_ylabel("gradient norm (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) <= 16:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _to_svg(fig)
