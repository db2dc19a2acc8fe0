"""Watch.report(): the HTML page, checked as HTML, as SVG, against torch/numpy, and in Chromium."""

from __future__ import annotations

import io
import math
import os
import re
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import _chromium  # tests/ is on sys.path under pytest's default import mode
import numpy as np
import PIL.Image
import pytest
import torch
from html_check import assert_valid_html
from torch import nn

import gradscope
from gradscope import GradscopeError
from gradscope._report.html import inline_svg, write_report
from gradscope._report.series import layer_flow, norm_series


class _Page(HTMLParser):
    """Collects what the tests look at: table cells, links, ids, scripts, SVG blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[tuple[str, str, str]] = []
        self.ids: list[str] = []
        self.tags: dict[str, int] = {}
        self._in_row = False
        self._cell: list[str] | None = None
        self._svg_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "poster", "data") and value:
                self.links.append((tag, name, value))
            if name == "id" and value:
                self.ids.append(value)
            if name == "style" and value and "url(" in value:
                self.links.append((tag, name, value))
        if tag == "svg":
            self._svg_depth += 1
        if tag == "tr":
            self._in_row = True
            self.rows.append([])
        elif tag == "td" and self._in_row and self._svg_depth == 0:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg_depth -= 1
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._in_row = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None and self._svg_depth == 0:
            self._cell.append(data)


def parse(path: Path) -> _Page:
    text = path.read_text(encoding="utf-8")
    assert_valid_html(text)  # HTMLParser below never raises: it only collects
    page = _Page()
    page.feed(text)
    page.close()
    return page


def svg_blocks(text: str) -> list[ET.Element]:
    """Every top-level <svg> element of the page, parsed as XML."""
    blocks = []
    for match in re.finditer(r"<svg\b.*?</svg>", text, flags=re.S):
        chunk = match.group(0)
        if "<svg" in chunk[4:]:  # nested svg: take up to the matching close
            continue
        blocks.append(ET.fromstring(chunk))
    return blocks


def train(net: nn.Module, steps: int, **watch_kwargs: object) -> gradscope.Watch:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    x, target = torch.randn(4, 1, 32, 32), torch.randn(4, 10)
    with gradscope.watch(net, **watch_kwargs) as w:  # type: ignore[arg-type]
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.mse_loss(net(x), target).backward()
            optimizer.step()
    return w


def test_report_table_matches_torch(lenet: nn.Module, tmp_path: Path) -> None:
    w = train(lenet, 3)
    path = w.report(tmp_path / "report.html")
    assert path == tmp_path / "report.html"
    page = parse(path)
    rows = {r[0]: r for r in page.rows if r}
    assert set(rows) == {name for name, _ in lenet.named_parameters()}
    for name, param in lenet.named_parameters():
        grad = param.grad.detach().double().numpy()
        norm, mean, absmax = (
            float(np.linalg.norm(grad)),
            float(grad.mean()),
            float(np.abs(grad).max()),
        )
        cells = rows[name]
        assert cells[1] == "×".join(map(str, param.shape))
        assert float(cells[2]) == pytest.approx(norm, rel=2e-3)
        assert float(cells[3]) == pytest.approx(mean, rel=2e-3, abs=1e-12)
        assert float(cells[5]) == pytest.approx(absmax, rel=2e-3)
        assert cells[6] == "0"
    assert page.tags.get("script") == 1  # the table sorter; charts bring their own <style>


def test_report_is_self_contained(lenet: nn.Module, tmp_path: Path) -> None:
    path = train(lenet, 4).report(tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    page = parse(path)
    outside = [link for link in page.links if not link[2].startswith(("#", "data:"))]
    assert outside == []
    assert "@import" not in text and "url(http" not in text
    assert "No backward graph was captured for this watch." in text
    assert len(page.ids) == len(set(page.ids)), "two inline SVGs share an id"
    ids = set(page.ids)
    for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', text):
        assert ref in ids, f"reference to a missing id {ref!r}"
    blocks = svg_blocks(text)
    assert len(blocks) >= 2 + 10  # two charts + one sparkline per parameter


def test_layer_flow_against_numpy(lenet: nn.Module) -> None:
    w = train(lenet, 2)
    order = [name for name, _ in lenet.named_parameters()]
    flows, exact = layer_flow(w.last, order)
    assert exact
    assert [f.layer for f in flows] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    for flow in flows:
        module = getattr(lenet, flow.layer)
        values = np.concatenate(
            [p.grad.detach().double().numpy().ravel() for p in module.parameters()]
        )
        assert flow.mean_abs == pytest.approx(np.abs(values).mean(), rel=1e-5)
        assert flow.max_abs == pytest.approx(np.abs(values).max(), rel=1e-6)
        assert flow.finite


def test_layer_flow_without_tensors_uses_rms(lenet: nn.Module) -> None:
    w = train(lenet, 1, keep="none")
    flows, exact = layer_flow(w.last, [n for n, _ in lenet.named_parameters()])
    assert not exact
    fc3 = next(f for f in flows if f.layer == "fc3")
    grads = np.concatenate([p.grad.double().numpy().ravel() for p in lenet.fc3.parameters()])
    assert fc3.mean_abs == pytest.approx(np.sqrt((grads**2).mean()), rel=1e-4)


def test_norm_series_matches_a_manual_record(lenet: nn.Module) -> None:
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.05)
    x, target = torch.randn(2, 1, 32, 32), torch.randn(2, 10)
    expected: dict[str, list[float]] = {name: [] for name, _ in lenet.named_parameters()}
    with gradscope.watch(lenet) as w:  # keep="last": older passes keep their norms only
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.mse_loss(lenet(x), target).backward()
            for name, param in lenet.named_parameters():
                expected[name].append(float(np.linalg.norm(param.grad.double().numpy())))
            optimizer.step()
    series = norm_series(w.records, list(expected))
    assert [s.name for s in series] == list(expected)
    for s in series:
        assert s.passes == (1, 2, 3, 4, 5)
        np.testing.assert_allclose(s.norms, expected[s.name], rtol=1e-5)


def test_nan_gradient_is_flagged(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    with gradscope.watch(net) as w:
        net(torch.ones(1, 3)).sum().backward()
        out = net(torch.tensor([[1.0, math.nan, 2.0]]))
        out.sum().backward()
    page = parse(w.report(tmp_path / "nan.html"))
    text = (tmp_path / "nan.html").read_text()
    rows = {r[0]: r for r in page.rows if r}
    assert int(rows["0.weight"][6]) == 4  # d/dW = outer(upstream, x): x's NaN fills a column
    assert int(rows["0.bias"][6]) == 0
    assert int(rows["1.weight"][6]) == 4  # every hidden activation is NaN
    assert int(rows["1.bias"][6]) == 0
    assert "NaN/Inf in the gradient of: 0.weight, 1.weight" in text
    assert "NaN/Inf" in rows["0.weight"][7]
    svg_blocks(text)  # the charts still parse with NaN norms in them


def test_missing_frozen_and_tied_parameters_are_flagged(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight
            self.unused = nn.Linear(3, 3)
            self.frozen = nn.Linear(3, 3)
            self.frozen.requires_grad_(False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(self.frozen(self.embed(ids)))
            return out

    net = Tied()
    with gradscope.watch(net) as w:
        net(torch.tensor([1, 2])).sum().backward()
    page = parse(w.report(tmp_path / "tied.html"))
    rows = {r[0]: r for r in page.rows if r}
    assert "tied: head.weight" in rows["embed.weight"][7]
    assert "missing" in rows["unused.weight"][7]
    assert "frozen" in rows["frozen.bias"][7]
    assert rows["unused.bias"][2] == "–"


def test_without_matplotlib_the_page_says_how_to_get_plots(
    lenet: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = train(lenet, 2)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    path = w.report(tmp_path / "plain.html")
    text = path.read_text()
    assert "pip install gradscope[plot]" in text
    page = parse(path)
    assert len([r for r in page.rows if r]) == 10
    assert len(svg_blocks(text)) == 10  # sparklines only


def test_report_without_records_is_an_error(lenet: nn.Module, tmp_path: Path) -> None:
    with gradscope.watch(lenet) as w:
        pass
    with pytest.raises(GradscopeError, match=r"nothing to report.*backward"):
        w.report(tmp_path / "empty.html")
    assert list(tmp_path.iterdir()) == []


def test_report_bad_paths(lenet: nn.Module, tmp_path: Path) -> None:
    w = train(lenet, 1)
    with pytest.raises(GradscopeError, match="does not exist"):
        w.report(tmp_path / "no" / "such" / "r.html")
    with pytest.raises(GradscopeError, match="that is a folder"):
        w.report(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GradscopeError, match="does not exist"):
        w.report(blocker / "r.html")
    with pytest.raises(GradscopeError, match="file path"):
        w.report(42)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_failed_write_keeps_the_old_file(
    lenet: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = train(lenet, 1)
    target = tmp_path / "r.html"
    target.write_text("old report")

    def refuse(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(GradscopeError, match="No space left"):
        w.report(target)
    assert target.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_inline_svg_prefixes_ids_and_references() -> None:
    svg = (
        '<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg xmlns="http://www.w3.org/2000/svg" '
        'xmlns:xlink="http://www.w3.org/1999/xlink"><metadata>x</metadata><defs>'
        '<clipPath id="p1"><rect/></clipPath><path id="m2"/></defs>'
        '<g clip-path="url(#p1)"><use xlink:href="#m2"/></g><a href="#elsewhere"/></svg>'
    )
    out = inline_svg(svg, "fig")
    root = ET.fromstring(out)
    assert root.tag.endswith("svg")
    assert "metadata" not in out and "DOCTYPE" not in out
    assert 'id="fig-p1"' in out and "url(#fig-p1)" in out and 'href="#fig-m2"' in out
    assert 'href="#elsewhere"' in out  # not an id of this SVG: left alone
    with pytest.raises(GradscopeError, match="<svg>"):
        inline_svg("<html/>", "x")


# --------------------------------------------------------------------------- in a browser
needs_chromium = pytest.mark.skipif(
    _chromium.chromium() is None,
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


@needs_chromium
def test_report_in_headless_chromium(lenet: nn.Module, tmp_path: Path) -> None:
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.01)
    x, target = torch.randn(4, 1, 32, 32), torch.randn(4, 10)
    with gradscope.watch(lenet) as w:
        for _ in range(6):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(lenet(x), target)
            g = gradscope.graph(loss, params=lenet, grads=True)
            loss.backward()
            optimizer.step()
    path = write_report(w, tmp_path / "report.html", graph=g)
    visit = _chromium.visit(
        path,
        expressions={
            "rows": "document.querySelectorAll('#params tbody tr').length",
            "charts": "document.querySelectorAll('.chart svg').length",
            "graph": "document.querySelectorAll('.graph svg g.node').length",
            "sorted": (
                "(function(){var th=document.querySelectorAll('#params th')[2];th.click();"
                "return Array.prototype.map.call(document.querySelectorAll('#params tbody tr'),"
                "function(r){return parseFloat(r.cells[2].getAttribute('data-v'));});})()"
            ),
        },
    )
    assert visit.loaded
    assert visit.errors == []
    assert visit.requests == [path.resolve().as_uri()]  # the page itself, nothing else
    assert visit.evaluated["rows"] == 10
    assert visit.evaluated["charts"] == 2
    assert visit.evaluated["graph"] >= 10  # Graphviz's node groups, drawn inline
    norms = visit.evaluated["sorted"]
    assert norms == sorted(norms, reverse=True)
    (tmp_path / "report.png").write_bytes(visit.screenshot)
    assert_not_blank(visit.screenshot)


def assert_not_blank(png: bytes) -> None:
    image = PIL.Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    assert width >= 800 and height >= 800
    pixels = np.asarray(image)
    background = pixels[0, 0]
    differing = np.any(pixels != background, axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert differing > 0.03, f"only {differing:.1%} of the screenshot differs from the background"
    assert colours > 50


@needs_chromium
def test_browser_check_catches_errors_and_requests(tmp_path: Path) -> None:
    """The harness itself: a page with a console error, an exception and an outside request."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
        "<img src='http://127.0.0.1:9/x.png'><script>console.error('boom');"
        "undefinedFunction();</script></body></html>"
    )
    visit = _chromium.visit(page, timeout=30)
    assert any("boom" in e for e in visit.errors)
    assert any("undefinedFunction" in e for e in visit.errors)
    assert "http://127.0.0.1:9/x.png" in visit.requests
    with pytest.raises(AssertionError):
        assert_not_blank(visit.screenshot)


class _Drawn:
    """Anything with to_svg() can be embedded (gradscope.Graph is the real one)."""

    def __init__(self, svg: str | None) -> None:
        self.svg = svg

    def to_svg(self) -> str:
        if self.svg is None:
            raise GradscopeError("no Graphviz renderer found: pip install graphviz-pure")
        return self.svg


def test_graph_is_embedded_or_explained(lenet: nn.Module, tmp_path: Path) -> None:
    w = train(lenet, 1)
    svg = (
        '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><g id="graph0">'
        '<g id="node1"><title>AddmmBackward0</title></g></g></svg>'
    )
    text = write_report(w, tmp_path / "g.html", graph=_Drawn(svg)).read_text()
    assert 'id="graph-graph0"' in text and "<title>AddmmBackward0</title>" in text
    assert len(svg_blocks(text)) == 2 + 10 + 1
    text = write_report(w, tmp_path / "n.html", graph=_Drawn(None)).read_text()
    assert "captured but could not be drawn: no Graphviz renderer found" in text


def test_gradients_clipped_in_place_after_the_pass(lenet: nn.Module, tmp_path: Path) -> None:
    x, target = torch.randn(2, 1, 32, 32), torch.randn(2, 10)
    with gradscope.watch(lenet) as w:
        nn.functional.mse_loss(lenet(x), target).backward()
        norms = {
            n: float(np.linalg.norm(p.grad.double().numpy())) for n, p in lenet.named_parameters()
        }
        nn.utils.clip_grad_norm_(lenet.parameters(), 1e-3)  # rewrites every .grad in place
    page = parse(w.report(tmp_path / "clipped.html"))
    rows = {r[0]: r for r in page.rows if r}
    for name, norm in norms.items():  # the table keeps the norms recorded when the pass ended
        assert float(rows[name][2]) == pytest.approx(norm, rel=2e-3)
    assert all(g.modified for g in w.last.values())
    flows, exact = layer_flow(w.last, list(norms))
    assert not exact
    fc3 = next(f for f in flows if f.layer == "fc3")
    squares = norms["fc3.weight"] ** 2 + norms["fc3.bias"] ** 2
    assert fc3.mean_abs == pytest.approx(np.sqrt(squares / (10 * 84 + 10)), rel=1e-4)


def test_watch_report_embeds_the_captured_graph(lenet: nn.Module, tmp_path: Path) -> None:
    with gradscope.watch(lenet) as w:
        loss = lenet(torch.randn(1, 1, 32, 32)).sum()
        w.graph(loss)
        loss.backward()
    text = w.report(tmp_path / "r.html").read_text()
    assert '<div class="graph" id="graph-view"><svg' in text and "AddmmBackward0" in text
    svg_blocks(text)
