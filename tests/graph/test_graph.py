"""gradscope.graph(): text, DOT, SVG (checked by parsing the XML), collapse, bad input."""

from __future__ import annotations

import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from graph_models import ResidualMLP, Reused, oracle, transformer
from torch import nn

import gradscope
from gradscope._graph.module_tags import install_module_tagging

SVG = "{http://www.w3.org/2000/svg}"
needs_renderer = pytest.mark.skipif(
    not gradscope._graph.render.find_renderers(), reason="no Graphviz renderer installed"
)


def _svg_nodes(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {g.get("id", ""): g for g in root.iter(SVG + "g") if "node" in (g.get("class") or "")}


def _lenet_loss() -> tuple[gradscope.LeNet, torch.Tensor]:
    net = gradscope.LeNet()
    loss = nn.MSELoss()(net(torch.randn(1, 1, 32, 32)), torch.randn(1, 10))
    return net, loss


def test_text_view_starts_with_the_tutorials_walk() -> None:
    net, loss = _lenet_loss()
    _, nodes, edges = oracle(loss)  # a plain next_functions traversal
    text = str(gradscope.graph(loss, params=net)).splitlines()
    assert text[0] == f"<gradscope.Graph: {nodes} nodes, {edges} edges>"
    assert text[1] == "#0 MseLossBackward0 -> #1 AddmmBackward0 -> #2 AccumulateGrad[fc3.bias]"
    mentioned = {int(tok[1:]) for line in text[1:] for tok in line.split() if tok.startswith("#")}
    assert mentioned == set(range(nodes))  # every node appears in the text


@needs_renderer
def test_svg_has_every_drawn_node_colours_and_a_legend() -> None:
    net, loss = _lenet_loss()
    g = gradscope.graph(loss, params=net, grads=True)
    loss.backward()
    svg = g.to_svg()
    nodes = _svg_nodes(svg)
    drawn = {
        f"node-{n.id}"
        for n in g.nodes
        if n.kind == "op" and n.op not in ("TBackward0", "ViewBackward0")
    }
    # parameters and TBackward0 are folded into ops; the flatten view is part of an edge
    assert set(nodes) - {"legend"} == drawn
    root_ = ET.fromstring(svg)
    view = next(n for n in g.nodes if n.op == "ViewBackward0")
    (consumer,) = [e.src for e in g.edges if e.dst == view.id]
    (child,) = [e.dst for e in g.edges if e.src == view.id]
    edge_ids = {e.get("id") for e in root_.iter(SVG + "g") if e.get("class") == "edge"}
    assert any(i and i.startswith(f"edge-{consumer}-{view.id}-") for i in edge_ids)
    titles = {t.text for t in root_.iter(SVG + "title")}
    assert f"n{consumer}->n{child}" in titles  # drawn straight to the op behind the view
    root = ET.fromstring(svg)
    assert any(g_.get("id") == "legend" for g_ in root.iter(SVG + "g"))
    # LeNet's modules have no submodules: no box each, their name on their op instead
    assert not [g_ for g_ in root.iter(SVG + "g") if g_.get("class") == "cluster"]
    labels = " ".join(t.text or "" for t in root.iter(SVG + "text"))
    assert "fc1: AddmmBackward0" in labels and "conv1: ConvolutionBackward0" in labels
    # larger gradient -> darker (lower luminance) fill
    fills = {}
    for n in g.nodes:
        el = nodes.get(f"node-{n.id}")
        if el is not None and n.grad_norm:
            shapes = [*el.iter(SVG + "path"), *el.iter(SVG + "polygon")]
            fills[n.id] = (n.grad_norm, shapes[0].get("fill"))
    lum = {k: sum(int(c[i : i + 2], 16) for i in (1, 3, 5)) for k, (_, c) in fills.items()}
    big = max(fills, key=lambda k: fills[k][0])
    small = min(fills, key=lambda k: fills[k][0])
    assert lum[big] < lum[small]
    text = " ".join(t.text or "" for t in root.iter(SVG + "text"))
    assert "fc3.bias" in text and "|g|" in text


@needs_renderer
def test_svg_marks_the_nan_origin() -> None:
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    loss = ((w * 1.0).sqrt() * 3).sum()
    g = gradscope.graph(loss, params={"w": w}, grads=True)
    loss.backward()
    origin = g.first_nonfinite
    assert origin is not None
    nodes = _svg_nodes(g.to_svg())
    marked = [k for k, el in nodes.items() if "origin" in (el.get("class") or "")]
    assert marked == [f"node-{origin.node.id}"]
    # the edge out of the origin carries the NaN: drawn in the non-finite colour
    root = ET.fromstring(g.to_svg())
    bad = [
        e for e in root.iter(SVG + "g") if (e.get("id") or "").startswith(f"edge-{origin.node.id}-")
    ]
    assert bad and all(p.get("stroke") == "#e31a1c" for e in bad for p in e.iter(SVG + "path"))


def test_to_graphviz_is_a_digraph_with_the_same_source() -> None:
    graphviz = pytest.importorskip("graphviz")
    net, loss = _lenet_loss()
    g = gradscope.graph(loss, params=net)
    digraph = g.to_graphviz()
    assert isinstance(digraph, graphviz.Digraph)
    body = "".join(digraph.body)
    folded = ("TBackward0", "ViewBackward0")
    assert all(f"n{n.id} [" in body for n in g.nodes if n.kind == "op" and n.op not in folded)


@needs_renderer
def test_save_by_suffix(tmp_path: Path) -> None:
    net, loss = _lenet_loss()
    g = gradscope.graph(loss, params=net)
    ET.parse(g.save(tmp_path / "g.svg"))
    assert (tmp_path / "g.dot").exists() is False
    assert g.save(tmp_path / "g.dot").read_text().startswith("digraph")
    assert g.save(tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(gradscope.GradscopeError, match=r"\.svg, \.png, \.dot"):
        g.save(tmp_path / "g.pdf")


def test_mimebundle_with_and_without_renderer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    net, loss = _lenet_loss()
    g = gradscope.graph(loss, params=net)
    if gradscope._graph.render.find_renderers():
        bundle = g._repr_mimebundle_()
        ET.fromstring(bundle["image/svg+xml"])
        assert bundle["text/plain"] == str(g)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    bundle = g._repr_mimebundle_()
    assert "image/svg+xml" not in bundle
    assert "digraph backward" in bundle["text/html"] and bundle["text/plain"] == str(g)


def test_collapse_by_module_depth_keeps_norms_and_bytes() -> None:
    net = transformer(2)
    install_module_tagging(net)
    loss = net(torch.randn(2, 5, 32)).pow(2).mean()
    g = gradscope.graph(loss, params=net, grads=True)
    loss.backward()
    c1 = g.collapse(1)
    mods = {n.module for n in c1.nodes if n.kind == "module"}
    assert mods == {"layers"}
    c2 = g.collapse(2)
    layers = {n.module: n for n in c2.nodes if n.kind == "module"}
    assert set(layers) == {"layers.0", "layers.1"}
    ops = sum(n.kind == "op" and (n.module or "").startswith("layers.0") for n in g.nodes)
    assert layers["layers.0"].ops == ops
    assert layers["layers.0"].saved_bytes == g.saved_bytes_by_module()["layers.0"] > 0
    # the gradient leaving layer 1 is what enters layer 0
    assert layers["layers.1"].grad_norm_out == pytest.approx(layers["layers.0"].grad_norm)
    assert layers["layers.0"].grad_norm is not None and math.isfinite(layers["layers.0"].grad_norm)
    with pytest.raises(gradscope.GradscopeError, match="positive int"):
        g.collapse(0)


def _drawn(dot: str) -> int:
    return sum(1 for line in dot.splitlines() if line.lstrip().startswith("n") and "->" not in line)


@pytest.mark.parametrize("tagged", [True, False])
def test_big_graphs_collapse_automatically_and_say_so(tagged: bool) -> None:
    net = ResidualMLP(2000)
    if tagged:
        install_module_tagging(net)
    g = gradscope.graph(net(torch.randn(2, 4)).sum(), params=net)
    assert len(g.nodes) > 10_000
    dot = g.to_dot(max_nodes=1500)
    assert "above the budget of 1500" in dot
    assert 10 < _drawn(dot) <= 1500
    full = g.to_dot(max_nodes=100_000)
    assert "above the budget" not in full and _drawn(full) > 6000


def test_untagged_chain_collapses_chains() -> None:
    x = torch.randn(3, requires_grad=True)
    z = x
    for _ in range(3000):
        z = torch.tanh(z * 1.01)
    g = gradscope.graph(z.sum())
    dot = g.to_dot(max_nodes=100)
    assert "chains of single-input ops drawn as one node" in dot


@needs_renderer
def test_parameter_used_100_times_renders_fast_with_folding() -> None:
    net = Reused(100)
    g = gradscope.graph(net(torch.randn(2, 8)).sum(), params=net)
    nodes = _svg_nodes(g.to_svg(timeout=60))
    # every op is drawn except the TBackward0 views that only carry lin.weight (folded)
    assert len(nodes) == sum(n.kind == "op" and n.op != "TBackward0" for n in g.nodes) == 201


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(gradscope.GradscopeError, match="at least one tensor"):
        gradscope.graph()
    with pytest.raises(gradscope.GradscopeError, match="at least one tensor"):
        gradscope.graph([])
    with pytest.raises(gradscope.GradscopeError, match=r"output 0 is float 3\.0, not a tensor"):
        gradscope.graph(3.0)  # type: ignore[arg-type]
    with pytest.raises(gradscope.GradscopeError, match="no grad_fn and does not require grad"):
        gradscope.graph(torch.randn(3))
    with torch.no_grad():
        detached = nn.Linear(2, 1)(torch.randn(1, 2))
    ok = torch.randn(2, requires_grad=True).sum()
    with pytest.raises(gradscope.GradscopeError) as err:
        gradscope.graph(ok, detached, "x")  # type: ignore[arg-type]
    assert "output 1" in str(err.value) and "output 2" in str(err.value)  # all at once
    with pytest.raises(gradscope.GradscopeError, match="grads= takes True or False"):
        gradscope.graph(ok, grads="yes")  # type: ignore[arg-type]
    with pytest.raises(gradscope.GradscopeError, match=r"params= takes an nn\.Module"):
        gradscope.graph(ok, params=torch.randn(2))  # type: ignore[arg-type]


def test_freed_graph_and_grads_after_backward() -> None:
    net, loss = _lenet_loss()
    loss.backward()
    with pytest.raises(gradscope.GradscopeError, match="retain_graph=True"):
        gradscope.graph(loss, params=net)
    with pytest.raises(gradscope.GradscopeError, match=r"before loss\.backward"):
        gradscope.graph(loss, params=net, grads=True)
    net, loss = _lenet_loss()
    _, nodes, _ = oracle(loss)
    loss.backward(retain_graph=True)
    assert len(gradscope.graph(loss, params=net)) == nodes  # retained: still walkable


def test_path_errors_say_which_inputs_exist() -> None:
    net, loss = _lenet_loss()
    g = gradscope.graph(loss, params=net)
    with pytest.raises(
        gradscope.GradscopeError, match=r"has no input 5; it has inputs \[0, 1, 2\]"
    ):
        g.path(0, 5)


@needs_renderer
def test_drawn_count_is_the_number_of_boxes_in_the_picture() -> None:
    net, loss = _lenet_loss()
    g = gradscope.graph(loss, params=net)
    boxes = set(_svg_nodes(g.to_svg())) - {"legend"}
    assert g.drawn_count() == len(boxes) == 12  # 16 ops less 3 TBackward0 and the flatten view
    _, nodes, _ = oracle(loss)  # a plain next_functions traversal
    assert g.drawn_count(fold=False) == nodes == 26  # nothing folded: every node is a box
    assert f"({g.drawn_count()} drawn)" in g.to_dot()  # the count in the picture's title
    big = gradscope.graph(ResidualMLP(300)(torch.randn(2, 4)).sum())
    node_lines = re.findall(r"^\tn\d+ \[", big.to_dot(max_nodes=50), flags=re.M)
    assert big.drawn_count(max_nodes=50) == len(node_lines) <= 50  # collapsed to the budget
