"""The report's Parameters table: one row per parameter of the newest pass, sortable and
filterable in the page (a few lines of JS, no libraries, no requests).

Each row has the pass's statistics, flags (NaN/Inf, missing, frozen, the summary's notes) and a
sparkline of the norm over the recorded passes, every row on one scale so heights compare.
"""

from __future__ import annotations

import html
import math
from typing import Any

from .._text import printable
from .._watch.records import BackwardRecord
from .plots import NormSeries
from .sparkline import SparkScale, fmt_number, sparkline
from .summary import Summary

__all__ = ["TABLE_JS", "params_table"]


def _escape(text: str) -> str:
    """HTML-escaped, with NUL/control characters and lone surrogates in names made visible
    (a surrogate cannot be written as UTF-8; see ``gradscope._text``)."""
    return html.escape(printable(text))


# Sort the table by a clicked column; filter rows by parameter name. No libraries, no requests.
TABLE_JS = """
(function(){
  var table=document.getElementById("params");
  var body=table.tBodies[0];
  var heads=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads,function(th,col){
    th.addEventListener("click",function(){
      var down=th.getAttribute("data-dir")!=="down";
      Array.prototype.forEach.call(heads,function(h){h.removeAttribute("data-dir");});
      th.setAttribute("data-dir",down?"down":"up");
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[col].getAttribute("data-v"),y=b.cells[col].getAttribute("data-v");
        var nx=parseFloat(x),ny=parseFloat(y),r;
        if(!isNaN(nx)&&!isNaN(ny)){r=nx-ny;}else{r=String(x).localeCompare(String(y));}
        return down?-r:r;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  var filter=document.getElementById("filter");
  filter.addEventListener("input",function(){
    var q=filter.value.toLowerCase();
    Array.prototype.forEach.call(body.rows,function(r){
      r.style.display=r.cells[0].textContent.toLowerCase().indexOf(q)>=0?"":"none";
    });
  });
})();
"""


def _cell(text: str, sort: Any, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<td{klass} data-v="{_escape(str(sort))}">{text}</td>'


def params_table(summary: Summary, series: dict[str, NormSeries], record: BackwardRecord) -> str:
    head = [
        "parameter",
        "shape",
        "norm",
        "mean",
        "std",
        "abs max",
        "non-finite",
        "flags",
        "norm over passes",
    ]
    scale = SparkScale.of(list(series.values()))  # one scale for every row: heights compare
    rows = []
    for row in summary.rows:
        flags = []
        nonfinite = None if row.nan is None or row.inf is None else row.nan + row.inf
        if nonfinite:
            flags.append('<span class="flag bad">NaN/Inf</span>')
        if row.name in record.missing:
            flags.append('<span class="flag">missing</span>')
        if row.name in record.frozen:
            flags.append('<span class="flag">frozen</span>')
        for part in row.note.split("; "):
            if part and part not in ("NON-FINITE", "no gradient", "frozen"):
                flags.append(f'<span class="flag">{_escape(part)}</span>')
        classes = "nonfinite" if nonfinite else ("nograd" if row.norm is None else "")
        shape = "×".join(map(str, row.shape)) or "–"
        numel = math.prod(row.shape) if row.shape else 0

        def num(value: float | None) -> str:
            return _cell(fmt_number(value), "" if value is None else value)

        cells = [
            _cell(_escape(row.name), row.name, "name"),
            _cell(shape, numel),
            num(row.norm),
            num(row.mean),
            num(row.std),
            num(row.abs_max),
            _cell(
                "–" if nonfinite is None else str(nonfinite), -1 if nonfinite is None else nonfinite
            ),
            _cell(" ".join(flags), len(flags), "note"),
            _cell(sparkline(series.get(row.name), scale), 0),
        ]
        rows.append(f'<tr class="{classes}">' + "".join(cells) + "</tr>")
    header = "".join(
        f'<th class="note">{h}</th>' if h == "flags" else f"<th>{h}</th>" for h in head[:-1]
    )
    header += (
        f'<th title="every row on the same scale, a faint line per power of 10">{head[-1]}'
        f'<br><span class="scale">{html.escape(scale.caption)}</span></th>'
    )

    return (
        '<input id="filter" type="search" placeholder="filter parameters" '
        'aria-label="filter parameters">'
        f'<table id="params"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}'
        "</tbody></table>"
    )
