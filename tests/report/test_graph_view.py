"""The report's backward graph in a real browser: pan, zoom, search, click to inspect, offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import _chromium  # tests/ is on sys.path under pytest's default import mode
import pytest
import torch
from graph_models import transformer
from torch import nn

import gradscope
from gradscope._report.graph_view import node_table
from gradscope._report.html import write_report

needs_chromium = pytest.mark.skipif(
    _chromium.chromium() is None,
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)",
)
needs_renderer = pytest.mark.skipif(
    not gradscope._graph.render.find_renderers(), reason="no Graphviz renderer installed"
)


def _report(tmp_path: Path) -> tuple[Path, gradscope.Graph]:
    net = gradscope.LeNet()
    x, target = torch.randn(2, 1, 32, 32), torch.randn(2, 10)
    with gradscope.watch(net) as w:
        loss = nn.functional.mse_loss(net(x), target)
        g = w.graph(loss)
        loss.backward()
    return write_report(w, tmp_path / "report.html", graph=g), g


def test_node_data_matches_the_drawn_graph(tmp_path: Path) -> None:
    if not gradscope._graph.render.find_renderers():
        pytest.skip("no Graphviz renderer installed")
    path, g = _report(tmp_path)
    page = path.read_text(encoding="utf-8")
    raw = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', page, re.S)
    assert raw is not None
    data = json.loads(raw.group(1))
    # Graphviz writes the "-" in ids as &#45;
    drawn_ids = {
        f"graph-node-{k}" for k in re.findall(r'<g id="graph-node&#45;(\d+)" class="node', page)
    }
    assert drawn_ids and drawn_ids <= set(data)  # every drawn node can be inspected
    fc1 = next(n for n in g.nodes if n.op == "AddmmBackward0" and n.module == "fc1")
    entry = data[f"graph-node-{fc1.id}"]
    assert entry["module"] == "fc1" and "fc1.weight" in entry["params"]
    assert entry["norm"] == pytest.approx(fc1.grad_norm)
    assert entry["saved_bytes"].endswith(("B", "KiB")) and entry["saved"]
    weight = dict(net_params(g))["fc1.weight"]
    assert {"label": "AccumulateGrad[fc1.weight]", "shape": [120, 400], "norm": weight} in [
        {**i, "norm": pytest.approx(i["norm"])} for i in entry["inputs"]
    ]


def net_params(g: gradscope.Graph) -> list[tuple[str, float | None]]:
    return [(n.param, n.grad_norm) for n in g.nodes if n.kind == "parameter" and n.param]


def test_node_table_survives_nan_and_collapsed_modules() -> None:
    x = torch.tensor([-1.0, 4.0], requires_grad=True)
    loss = x.sqrt().sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    table = node_table(g.nodes, g.edges)
    json.dumps(table, allow_nan=False)  # NaN/Inf become text
    sqrt = next(v for v in table.values() if v["op"] == "SqrtBackward0")
    assert sqrt["inputs"][0]["norm"] == "NaN"
    net = transformer(2)
    c = gradscope.graph(net, torch.randn(2, 5, 32)).collapse(2)
    rows = node_table(c.nodes, c.edges)
    layer = next(v for v in rows.values() if v["kind"] == "module")
    assert layer["ops"] > 10 and layer["params"]


@needs_chromium
@needs_renderer
def test_report_graph_pans_zooms_searches_and_inspects_offline(tmp_path: Path) -> None:
    path, g = _report(tmp_path)
    conv2 = next(n for n in g.nodes if n.op == "ConvolutionBackward0" and n.module == "conv2")
    fire = (
        "function(el,type,x,y,extra){var ev=new (type==='wheel'?WheelEvent:"
        "(type.indexOf('pointer')===0?PointerEvent:MouseEvent))(type,Object.assign("
        "{bubbles:true,cancelable:true,clientX:x,clientY:y},extra||{}));el.dispatchEvent(ev);}"
    )
    transform = "document.querySelector('#graph-view svg').style.transform"
    visit = _chromium.visit(
        path,
        expressions={
            "nodes": "document.querySelectorAll('#graph-view svg g.node').length",
            "start": transform,
            "search": (
                "(function(){var s=document.getElementById('graph-search');"
                "s.value='fc1.weight';s.dispatchEvent(new Event('input'));"
                "return {hits:Array.prototype.map.call(document.querySelectorAll("
                "'#graph-view g.node.hit'),function(g){return g.id;}),"
                "found:document.getElementById('graph-found').textContent,"
                "panel:document.getElementById('graph-panel').textContent,"
                f"transform:{transform}}};}})()"
            ),
            "click": (
                f"(function(){{var fire={fire};"
                f"var g=document.getElementById('graph-node-{conv2.id}');"
                "var r=g.getBoundingClientRect();"
                "fire(g.querySelector('text'),'click',r.left+2,r.top+2);"
                "return {panel:document.getElementById('graph-panel').textContent,"
                "picked:document.querySelector('#graph-view g.node.picked').id};})()"
            ),
            "zoom": (
                f"(function(){{var fire={fire};var v=document.getElementById('graph-view');"
                f"var before={transform};"
                "document.querySelector('[data-zoom=in]').click();var button="
                f"{transform};fire(v,'wheel',100,100,{{deltaY:-100}});var wheel={transform};"
                "fire(v,'pointerdown',200,200);fire(window,'pointermove',260,230);"
                f"fire(window,'pointerup',260,230);var pan={transform};"
                "document.querySelector('[data-zoom=fit]').click();"
                f"return [before,button,wheel,pan,{transform}];}})()"
            ),
        },
    )
    assert visit.loaded and visit.errors == []
    assert visit.requests == [path.resolve().as_uri()]  # offline: nothing but the page
    ev = visit.evaluated
    assert ev["nodes"] >= 10
    assert "scale(" in ev["start"]
    fc1 = next(n for n in g.nodes if n.op == "AddmmBackward0" and n.module == "fc1")
    assert ev["search"]["hits"] == [f"graph-node-{fc1.id}"]
    assert ev["search"]["found"] == "1 of 1"
    assert "fc1.weight" in ev["search"]["panel"] and "AddmmBackward0" in ev["search"]["panel"]
    assert ev["search"]["transform"] != ev["start"]  # jumped to it
    panel = ev["click"]["panel"]
    assert ev["click"]["picked"] == f"graph-node-{conv2.id}"
    for part in ("ConvolutionBackward0", "conv2", "saved activations", "|grad| flowing in"):
        assert part in panel
    assert f"{conv2.grad_norm:.2e}" in panel  # as the SVG writes it
    assert "(2, 6, 14, 14)" in panel  # the saved input's shape
    _, _, wheel, pan, fitted = ev["zoom"]
    scale = [float(re.search(r"scale\(([\d.e-]+)\)", t).group(1)) for t in ev["zoom"]]  # type: ignore[union-attr]
    assert scale[1] > scale[0] and scale[2] > scale[1]  # button and wheel zoom in
    assert pan != wheel and scale[3] == scale[2]  # a drag moves without zooming
    assert fitted != pan
    (tmp_path / "report-graph.png").write_bytes(visit.screenshot)
