"""``w.report(path, ranks="all")``: every rank's view of the gradients, side by side.

Collective: :func:`gather_rank_views` sends each rank's per-parameter norms (and its total norm
per recorded pass) to every rank with one ``all_gather_object``; rank 0 writes the page, with a
table of one column per rank and a chart of each rank's total norm, so a rank that diverges
stands out. What a rank contributes: under FSDP2 its shard's norms (``local_stats``), under DDP
the gradient it computed before averaging (``local``, where the record still holds it), and
otherwise ``stats``.

>>> views = [RankView(0, {"w": (1.0, 0)}, [(1, 1.0)]), RankView(1, {"w": (3.0, 0)}, [(1, 3.0)])]
>>> "rank 1" in ranks_section(views)
True
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch.distributed as dist

from .._watch.records import BackwardRecord, GradRecord

__all__ = ["RankView", "gather_rank_views", "ranks_section"]


@dataclass(frozen=True)
class RankView:
    """One rank's newest per-parameter ``(norm, nonfinite count)`` and total norm per pass."""

    rank: int
    params: dict[str, tuple[float, int]]
    totals: list[tuple[int, float]]


def _rank_norm(grad: GradRecord, record: BackwardRecord) -> tuple[float, int, bool]:
    """This rank's norm and non-finite count, and whether they are this rank's own."""
    if grad.rank_stats is not None:  # FSDP2: this rank's shard
        stats = grad.local_stats
        return stats.norm, stats.nan + stats.inf, True
    local = grad.local_norm()  # DDP: what this rank computed, while the record holds it
    if local is not None:
        return local[0], local[1], True
    stats = grad.recorded  # a DDP pass that synchronised: the same on every rank
    return stats.norm, stats.nan + stats.inf, record.synchronised is not True


def own_view(records: Sequence[BackwardRecord], rank: int) -> RankView:
    """This rank's view of its records (no collective).

    The totals cover the passes whose numbers are this rank's own: under DDP that is the
    passes whose records still hold the local gradient (the newest one with ``keep="last"``,
    every one with ``keep="all"``) and those run inside ``no_sync()``.
    """
    newest = records[-1]
    params = {name: _rank_norm(grad, newest)[:2] for name, grad in newest.grads.items()}
    totals = []
    for record in records:
        norms = [_rank_norm(g, record) for g in record.grads.values()]
        if norms and all(own for _, _, own in norms):
            totals.append((record.index, math.sqrt(math.fsum(n**2 for n, _, _ in norms))))
    return RankView(rank, {n: (v[0], int(v[1])) for n, v in params.items()}, totals)


def gather_rank_views(records: Sequence[BackwardRecord]) -> list[RankView]:
    """Every rank's :class:`RankView` (collective: every rank must call it)."""
    mine = own_view(records, dist.get_rank())
    views: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(views, mine)
    return [v for v in views if isinstance(v, RankView)]


def _cell(norm: float, bad: int, median: float) -> str:
    odd = bad or (median > 0 and not 0.5 <= norm / median <= 2.0) or math.isnan(norm)
    style = ' class="rank-odd"' if odd else ""
    extra = f" ({bad} NaN/Inf)" if bad else ""
    return f"<td{style}>{norm:.4g}{extra}</td>"


def _chart(views: Sequence[RankView]) -> str:
    points = [(i, t) for v in views for i, t in v.totals if math.isfinite(t) and t > 0]
    if not points:
        return ""
    width, height, pad = 640, 200, 30
    lo_i, hi_i = min(p[0] for p in points), max(p[0] for p in points)
    lo_t, hi_t = math.log10(min(p[1] for p in points)), math.log10(max(p[1] for p in points))
    span_i, span_t = max(hi_i - lo_i, 1), max(hi_t - lo_t, 1e-12)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
    lines = []
    for k, view in enumerate(views):
        xy = [
            (
                pad + (i - lo_i) / span_i * (width - 2 * pad),
                height - pad - (math.log10(t) - lo_t) / span_t * (height - 2 * pad),
            )
            for i, t in view.totals
            if math.isfinite(t) and t > 0
        ]
        colour = colours[k % len(colours)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        lines.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in xy)
        lines.append(
            f'<text x="{width - pad + 4}" y="{pad + 14 * k}" fill="{colour}" '
            f'font-size="12">rank {view.rank}</text>'
        )
    drawn = "".join(lines)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 60}" height="{height}" '
        f'role="img" aria-label="total gradient norm per rank over the passes">'
        f'<text x="{pad}" y="14" font-size="12">total gradient norm per rank (log scale, '
        f"{10**lo_t:.3g} to {10**hi_t:.3g}), passes {lo_i}-{hi_i}</text>"
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        f'stroke="#999"/>{drawn}</svg>'
    )


def ranks_section(views: Sequence[RankView]) -> str:
    """The page's "Ranks" section: a column per rank for every parameter, and the chart."""
    names = list(dict.fromkeys(n for v in views for n in v.params))
    head = "".join(f"<th>rank {v.rank}</th>" for v in views)
    rows = []
    for name in names:
        norms = [v.params.get(name, (math.nan, 0)) for v in views]
        finite = [n for n, _ in norms if math.isfinite(n)]
        median = statistics.median(finite) if finite else math.nan
        cells = "".join(_cell(n, bad, median) for n, bad in norms)
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return (
        "<style>.rank-odd{background:#fde0dc;font-weight:600}</style>"
        f'<p class="sub">Each rank\'s gradient norm per parameter in the newest pass '
        f"(FSDP2: the rank's shard; DDP: what the rank computed before averaging); cells more "
        f"than 2x from the median of the ranks, or not finite, are marked.</p>"
        f'<div class="chart">{_chart(views)}</div>'
        f"<table><thead><tr><th>parameter</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
