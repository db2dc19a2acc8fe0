"""``Watch.report(path)``: one self-contained HTML page about the recorded backward passes.

Everything is inline (SVG, CSS and a few lines of JS): the page makes no request, so it can be
mailed, attached to a CI run or opened offline. The charts need matplotlib (the ``plot`` extra);
without it the page keeps its table and sparklines and says how to get the charts.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from .._errors import GradscopeError
from .._files import atomic_write
from .._text import printable
from .._version import __version__
from .._watch.records import BackwardRecord
from .findings import diagnosis_html
from .graph_view import GRAPH_CSS, GRAPH_JS, graph_section
from .plots import PLOT_HINT, NormSeries, flow_svg, norms_svg
from .series import layer_flow, norm_series, ordered
from .summary import Summary
from .table import TABLE_JS, params_table

__all__ = ["Reportable", "render_report", "write_report"]


class _HasSvg(Protocol):
    def to_svg(self) -> str: ...


class Reportable(Protocol):
    """What a report reads: a :class:`gradscope.Watch` is one. Typed here, so that this layer
    never imports the watch (the watch imports this module when asked for a report)."""

    @property
    def records(self) -> list[BackwardRecord]: ...

    @property
    def errors(self) -> list[BaseException]: ...

    @property
    def model_name(self) -> str: ...


# --------------------------------------------------------------------------- html pieces
def _escape(text: str) -> str:
    """HTML-escaped, with NUL/control characters and lone surrogates in names made visible
    (a surrogate cannot be written as UTF-8; see ``gradscope._text``)."""
    return html.escape(printable(text))


_ID = re.compile(r'\bid="([^"]+)"')


def inline_svg(svg: str, prefix: str) -> str:
    """SVG text made safe to paste into HTML next to other SVGs.

    Drops the XML prolog, DOCTYPE and metadata, and prefixes every id (and every reference
    to it) so that two charts never share a clip-path or marker id.
    """
    start = svg.find("<svg")
    if start < 0:
        raise GradscopeError("inline_svg() was given text without an <svg> element")
    body = re.sub(r"<metadata>.*?</metadata>", "", svg[start:], flags=re.S)
    ids = set(_ID.findall(body))
    if not ids:
        return body

    def rename(match: re.Match[str]) -> str:
        ident = match.group(2)
        return f"{match.group(1)}{prefix}-{ident}" if ident in ids else match.group(0)

    body = re.sub(r'(\bid=")([^"]+)', rename, body)
    return re.sub(r"(#)([A-Za-z_][\w.:-]*)", rename, body)


_CSS = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#fff;--soft:#f6f8fa;--bad:#cb181d;
--warn:#9a6700;--accent:#08519c}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);
background:var(--bg);margin:0;padding:24px 32px;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
var(--line);padding-bottom:4px}
.sub{color:var(--muted);margin:0 0 12px}
.alerts{list-style:none;padding:0;margin:12px 0}
.alerts li{padding:6px 10px;border-left:4px solid var(--warn);background:#fff8c5;margin:4px 0}
.alerts li.bad{border-color:var(--bad);background:#ffebe9}
.alerts li.ok{border-color:#1a7f37;background:#dafbe1}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--soft);cursor:pointer;user-select:none;position:sticky;top:0}
th:first-child,td:first-child,td.note,th.note{text-align:left}
tr.nonfinite td{background:#ffebe9}tr.nograd td{color:var(--muted)}
td.name{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.flag{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;margin-right:4px;
background:var(--soft);border:1px solid var(--line)}
.flag.bad{color:#fff;background:var(--bad);border-color:var(--bad)}
.spark polyline{fill:none;stroke:var(--accent);stroke-width:1.3}
.spark circle{fill:var(--accent)}.spark circle.bad{fill:var(--bad)}
.scale{font-weight:normal;font-size:11px;color:var(--muted)}
.chart svg{width:100%;height:auto}.graph svg{max-width:100%;height:auto}
.graph{overflow:auto;border:1px solid var(--line);padding:8px;max-height:900px}
.note-box{padding:10px 12px;background:var(--soft);border:1px dashed var(--line)}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;background:var(--soft);
padding:1px 4px;border-radius:4px}
input#filter{margin:4px 0 8px;padding:4px 8px;width:260px;border:1px solid var(--line);
border-radius:6px}
footer{margin-top:32px;color:var(--muted);font-size:12px}
"""


def _alerts(
    records: Sequence[BackwardRecord], last: BackwardRecord, errors: int, order: Sequence[str]
) -> str:
    items = []
    if last.nonfinite:
        bad = ", ".join(ordered(last.nonfinite, order))
        items.append(("bad", f"NaN/Inf in the gradient of: {bad}"))
    if last.missing:
        items.append(("", f"received no gradient (unused or detached): {', '.join(last.missing)}"))
    if last.frozen:
        items.append(("", f"frozen (requires_grad=False): {', '.join(last.frozen)}"))
    if last.replaced:
        items.append(("", f"replaced by a new nn.Parameter: {', '.join(last.replaced)}"))
    earlier = [r.index for r in records[:-1] if r.nonfinite]
    if earlier:
        shown = ", ".join(map(str, earlier[:10])) + (" …" if len(earlier) > 10 else "")
        items.append(("bad", f"earlier passes with NaN/Inf gradients: {shown}"))
    if errors:
        items.append(("bad", f"{errors} error(s) inside gradscope's hooks: see watch.errors"))
    if not items:
        items.append(("ok", "every parameter received a finite gradient in the last pass"))
    lis = "".join(f'<li class="{c}">{_escape(text)}</li>' for c, text in items)
    return f'<ul class="alerts">{lis}</ul>'


def _charts(
    records: Sequence[BackwardRecord], series: list[NormSeries], order: Sequence[str]
) -> tuple[str, str]:
    last = records[-1]
    try:
        flows, exact = layer_flow(last, order)
        what = "mean and max" if exact else "root mean square (tensors were not kept) and max"
        flow = inline_svg(
            flow_svg(flows, f"gradient flow, backward pass {last.index}: {what} |grad| per layer"),
            "flow",
        )
        norms = inline_svg(
            norms_svg(series, f"gradient norm per parameter over {len(records)} recorded passes"),
            "norms",
        )
    except GradscopeError as error:
        if "matplotlib" not in str(error):
            raise
        note = (
            '<p class="note-box">Charts need matplotlib, which is not installed: '
            f"<code>{_escape(PLOT_HINT)}</code>, then write the report again. "
            "The table's sparklines show each norm over the passes meanwhile.</p>"
        )
        return note, note
    return f'<div class="chart">{flow}</div>', f'<div class="chart">{norms}</div>'


def _findings(watch: Reportable) -> str:
    """The diagnosis, first on the page; a watch without ``diagnose()`` (any other
    Reportable) has none."""
    diagnose = getattr(watch, "diagnose", None)
    if diagnose is None:
        return ""
    return f"<h2>Findings</h2>{diagnosis_html(diagnose())}"


def render_report(
    watch: Reportable,
    graph: _HasSvg | None = None,
    *,
    title: str | None = None,
    ranks_html: str | None = None,
) -> str:
    """The report page as a string; see :func:`write_report`."""
    records = watch.records
    if not records:
        raise GradscopeError(
            "report(): nothing to report, no backward pass was recorded; "
            "run forward and backward inside the watch first"
        )
    last = records[-1]
    summary = Summary.of(last)
    order = [row.name for row in summary.rows]
    series = norm_series(records, order)
    flow_html, norms_html = _charts(records, series, order)
    findings_html = _findings(watch)
    if graph is not None:
        graph_html = graph_section(graph, inline_svg)
        graph_js = f"<script>{GRAPH_JS}</script>" if "graph-data" in graph_html else ""
    else:
        hint = (
            " Call <code>w.graph(loss)</code> before <code>loss.backward()</code> to capture one."
        )
        graph_html = f'<p class="note-box">No backward graph was captured for this watch.{hint}</p>'
        graph_js = ""
    model = _escape(watch.model_name)
    heading = _escape(title or f"gradscope report: {watch.model_name}")
    first, newest = records[0].index, last.index
    passes = f"pass {newest}" if first == newest else f"passes {first}–{newest}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{heading}</title><style>{_CSS}{GRAPH_CSS}</style></head>
<body>
<h1>{heading}</h1>
<p class="sub">{model} · {len(records)} recorded backward {
        "pass" if len(records) == 1 else "passes"
    } ({passes}) · {len(summary.rows)} parameters · table and flow chart show pass
{newest}</p>
{findings_html}
{_alerts(records, last, len(watch.errors), order)}
<h2>Parameters</h2>
{params_table(summary, {s.name: s for s in series}, last)}
<h2>Gradient flow</h2>
{flow_html}
<h2>Gradient norm over the recorded passes</h2>
{norms_html}
{"<h2>Ranks</h2>" + ranks_html if ranks_html is not None else ""}
<h2>Backward graph</h2>
{graph_html}
<footer>gradscope {_escape(__version__)} · torch {_escape(torch.__version__)}
· this page is self-contained: it loads nothing from the network</footer>
<script>{TABLE_JS}</script>
{graph_js}
</body></html>
"""


def write_report(
    watch: Reportable,
    path: str | os.PathLike[str],
    graph: _HasSvg | None = None,
    *,
    ranks: str | None = None,
) -> Path:
    """Write the report for ``watch`` to ``path`` atomically and return the path.

    ``ranks="all"`` (collective, under torch.distributed): every rank's view is gathered and
    rank 0 alone writes the page, with a "Ranks" section (see ``ranks``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise GradscopeError(f"report() takes a file path, not {type(path).__name__}")
    target = Path(path)
    if target.is_dir():
        raise GradscopeError(
            f"report({str(target)!r}): that is a folder; pass a file name such as "
            f"{str(target / 'report.html')!r}"
        )
    if ranks is None:
        atomic_write(target, render_report(watch, graph))
        return target
    import torch.distributed as dist

    from .ranks import gather_rank_views, own_view, ranks_section

    if dist.is_available() and dist.is_initialized():
        views = gather_rank_views(watch.records)  # every rank takes part
        if dist.get_rank() != 0:
            return target
    else:
        views = [own_view(watch.records, 0)]
    atomic_write(target, render_report(watch, graph, ranks_html=ranks_section(views)))
    return target
