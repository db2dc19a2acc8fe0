"""_repr_html_ of Watch, BackwardRecord, Summary and StepReport: what a notebook shows."""

from __future__ import annotations

import html
from html.parser import HTMLParser

import torch
from html_check import assert_valid_html
from torch import nn

import gradscope
from gradscope._report.sparkline import fmt_number


class _Tables(HTMLParser):
    """Rows of cell texts (text inside the sparkline SVGs left out) and each row's style."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.styles: list[str] = []
        self._cell: list[str] | None = None
        self._svg = 0
        assert_valid_html(text, fragment=True)  # HTMLParser never raises: it only collects
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "svg":
            self._svg += 1
        elif tag == "tr":
            self.rows.append([])
            self.styles.append(dict(attrs).get("style") or "")
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg -= 1
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not self._svg:
            self._cell.append(data)


def test_watch_record_and_summary_show_the_summary_numbers(lenet: nn.Module) -> None:
    with gradscope.watch(lenet) as w:
        for _ in range(2):
            lenet.zero_grad()
            lenet(torch.randn(2, 1, 32, 32)).pow(2).mean().backward()
    summary = w.summary()
    for shown in (w._repr_html_(), w.last._repr_html_(), summary._repr_html_()):
        table = _Tables(shown)
        header, *rows = table.rows
        assert header[:4] == ["parameter", "shape", "norm", "mean"]
        assert [r[0] for r in rows] == [row.name for row in summary.rows]
        for cells, row in zip(rows, summary.rows, strict=True):
            assert cells[2] == fmt_number(row.norm)
            assert cells[3] == fmt_number(row.mean)
            assert cells[6:8] == ["0", "0"]
    assert w._repr_html_().count('<svg class="spark"') == 10
    assert w.last._repr_html_().count("<svg") == 0


def test_nonfinite_rows_stand_out_and_names_are_escaped() -> None:
    net = nn.Module()
    net.register_parameter("<b>w</b>", nn.Parameter(torch.ones(3)))
    net.register_parameter("ok", nn.Parameter(torch.ones(3)))
    with gradscope.watch(net) as w:
        (getattr(net, "<b>w</b>") * float("nan") + net.ok).sum().backward()
    shown = w.last._repr_html_()
    assert "<b>w</b>" not in shown and "&lt;b&gt;w&lt;/b&gt;" in shown
    table = _Tables(shown)
    by_name = dict(zip((r[0] for r in table.rows), table.styles, strict=True))
    assert "#ffebe9" in by_name["<b>w</b>"]
    assert by_name["ok"] == ""
    assert next(r for r in table.rows if r[0] == "<b>w</b>")[6:8] == ["3", "0"]


def test_a_watch_without_records_says_why() -> None:
    net = nn.Linear(2, 1)
    with gradscope.watch(net) as w:
        with torch.no_grad():
            net(torch.ones(1, 2))
        shown = w._repr_html_()
    assert "<table" not in shown
    assert "&lt;gradscope.Watch of Linear: 2 hooked parameters, 0 records, open&gt;" in shown
    assert "backward() has not run since watch() started" in shown


def test_step_report_rows_verdicts_and_reasons() -> None:
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    with gradscope.check_step(opt, params=net, manual=True) as report:
        assert "not filled in yet" in report._repr_html_()
        with torch.no_grad():
            net.weight.sub_(net.weight.grad)  # lr forgotten on one parameter
            net.bias.sub_(0.1 * net.bias.grad)
        opt.zero_grad(set_to_none=False)
    shown = report._repr_html_()
    table = _Tables(shown)
    header, *rows = table.rows
    assert header[-1] == "verdict"
    verdicts = {r[0]: r[-1] for r in rows}
    assert verdicts["weight"] == report["weight"].verdict
    assert report.headline() in shown
    assert verdicts == {"weight": "FAIL", "bias": "ok"}
    assert "#ffebe9" in table.styles[1 + [r[0] for r in rows].index("weight")]
    assert "reason: weight:" in shown


def test_step_report_shows_an_unresolved_step_muted_with_its_note() -> None:
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=1e-10)  # updates far below float32 rounding
    net(torch.ones(1, 3)).sum().backward()
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    shown = report._repr_html_()
    table = _Tables(shown)
    _, *rows = table.rows
    assert {r[0]: r[-1] for r in rows} == {"weight": "unresolved", "bias": "unresolved"}
    assert all("#57606a" in style for style in table.styles[1:])
    assert "2 parameter(s) matched but are unresolved" in shown
    assert html.escape(report.headline()) in shown
